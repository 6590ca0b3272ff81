"""Fault injection (issue 17): where a resumed run writes, two writers, full and read-only disks, hostile
model files (crafted and fuzzed, in bounded memory), bad CLI input, a killed grid parent, resumed logs.

One test per case; the table with the outcome of each is experiments/RESULTS_faults.md. Real processes
where the fault is between processes (locks, kill -9), a patched write for ENOSPC (and a real tiny tmpfs
where the machine lets us mount one)."""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import tracemalloc

import pytest

from agents import PPO
from rlgeom.persistence import checkpoint as ckpt
from rlgeom.persistence import outputs
from rlgeom.persistence.outputs import DirectoryInUseError, DiskFullError
from rlgeom.persistence.serialization import ModelFileError
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
    _agent().learn(2 * 32, checkpoint_every=32, checkpoint_dir=tmp_path)
    for path in [ckpt.checkpoint_path(tmp_path, s) for s in (1, 10_000)]:  # copied in later by hand
        open(path, "wb").write(b"another run's")
    resumed = PPO.load(ckpt.checkpoint_path(tmp_path, 64), env="CartPole-v1")  # its folder: it holds its own file
    resumed.learn(3 * 32, reset_num_timesteps=False, checkpoint_every=32, keep_checkpoints=2)
    assert [s for s, _ in ckpt.list_checkpoints(tmp_path)] == [1, 32, 128, 160, 10_000]


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
    """A real read-only mount (exit 2 before training), a real 64 kB tmpfs filled by TensorBoard events and
    a 300 kB one filled by checkpoints (ENOSPC mid-run: exit 1, earlier checkpoints kept, no partial
    file). Skipped where the machine does not let us mount."""
    ro, tiny, tiny_logs = tmp_path / "ro", tmp_path / "tiny", tmp_path / "tiny_logs"
    if not (_mount_tmpfs(ro, "size=1m,ro") and _mount_tmpfs(tiny, "size=300k") and _mount_tmpfs(tiny_logs, "size=64k")):
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, err = _cli([*CLI_SMALL, "--timesteps", "64", "--logdir", str(ro)], capsys)
        assert code == 2 and "read-only" in err
        # TensorBoard's events fill the disk: raised in its writer thread, reported once, no traceback
        code, err = _cli([*CLI_SMALL, "--timesteps", "20000", "--logdir", str(tiny_logs)], capsys)
        assert code == 1 and err.startswith("error: no space left to write the TensorBoard events of")
        code, err = _cli([*CLI_SMALL, "--timesteps", "6400", "--checkpoint-every", "32", "--keep-checkpoints", "1000",
                          "--logdir", str(tmp_path / "logs"), "--checkpoint-dir", str(tiny)], capsys)
        assert code == 1 and "no space left to write" in err
        kept = ckpt.list_checkpoints(tiny)
        assert kept and not any(".tmp" in n for n in os.listdir(tiny))
        PPO.load(kept[-1][1])  # every checkpoint left is complete
    finally:
        for mount in (ro, tiny, tiny_logs):  # lazily: the failed run's event file may still be open
            subprocess.run(["umount", "-l", str(mount)])


def test_a_save_path_that_fails_after_training_falls_back_to_the_run_directory(tmp_path, monkeypatch, capsys):
    target = tmp_path / "models" / "final"
    real = outputs.write_atomically

    def write(path, data, resume_from=None):
        if path.startswith(str(target)):  # the disk filled up during training
            raise outputs.write_error(path, OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))
        return real(path, data, resume_from)

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


# ----------------------------------------------------------------------------- 5. hostile model files
@pytest.fixture(scope="module")
def checkpoint_file(trained_run) -> str:
    return ckpt.checkpoint_path(trained_run / "checkpoints", 64)


def _split(path) -> tuple[dict, bytes]:
    raw = open(path, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    return json.loads(raw[8:8 + n]), raw[8 + n:]


def _loads_bounded(source, limit_mb: float = 16.0):
    """PPO.load(source) with tracemalloc on: (exception or None, peak MB of Python allocations)."""
    tracemalloc.start()
    try:
        PPO.load(source, env="CartPole-v1")
        err = None
    except Exception as e:  # noqa: BLE001 - the caller asserts what it is
        err = e
    peak = tracemalloc.get_traced_memory()[1] / 2**20
    tracemalloc.stop()
    return err, peak


def _description_edit(key, value):
    def edit(d):
        target = d
        *path, last = key.split(".")
        for part in path:
            target = target[part]
        target[last] = value
    return edit


HOSTILE = {
    "header-is-a-list": (lambda h, b: (b"[1, 2, 3]", b), "header is a JSON list, not an object"),
    "header-deeply-nested": (lambda h, b: (b"[" * 200_000 + b"]" * 200_000, b), "nested too deeply"),
    "description-deeply-nested": (
        lambda h, b: (json.dumps({**h, "__metadata__": {**h["__metadata__"], "description": "[" * 200_000}}).encode(), b),
        "nested too deeply"),
    "infinity-counter": (_description_edit("num_timesteps", float("inf")), "num_timesteps must be a non-negative integer"),
    "string-counter": (_description_edit("n_updates", "7"), "n_updates must be a non-negative integer"),
    "infinity-hyperparameter": (_description_edit("hyperparameters.learning_rate", float("inf")),
                                "learning_rate is not a finite number"),
    "string-n-envs": (_description_edit("n_envs", "4"), "n_envs must be an integer"),
    "checkpoint-state-list": (_description_edit("checkpoint.state", [1, 2]), "state must be a JSON object"),
    "checkpoint-record-list": (_description_edit("checkpoint", [1]), "checkpoint record is inconsistent"),
    "ten-million-envs": (_description_edit("n_envs", 10**7), "n_envs must be an integer from 1 to 65536"),
    "two-billion-unit-layer": (_description_edit("policy_kwargs", {"net_arch": [2 * 10**9]}),
                               "asks for a network of at least"),
    "widest-layers-twice": (_description_edit("policy_kwargs", {"net_arch": [65536, 65536]}),
                            "asks for a network of at least"),
    "billion-actions": (_description_edit("action_space.n", 10**9), "action_space is a Discrete of size"),
    "billion-observations": (_description_edit("observation_space.shape", [10**9]), "observation_space is a Box"),
}


@pytest.mark.parametrize("case", list(HOSTILE))
def test_hostile_model_files_are_model_file_errors_in_bounded_memory(case, checkpoint_file, tmp_path):
    craft, message = HOSTILE[case]
    header, body = _split(checkpoint_file)
    if case.startswith(("header-", "description-deeply")):
        new_header, new_body = craft(header, body)
        bad = _write_raw(tmp_path / f"{case}.safetensors", new_header, new_body)
    else:
        bad = _edit_description(checkpoint_file, tmp_path / f"{case}.safetensors", craft)
    err, peak = _loads_bounded(bad)
    assert isinstance(err, ModelFileError) and message in str(err), repr(err)
    assert peak < 16, f"{peak:.1f} MB of Python allocations"


def test_a_sparse_multi_gigabyte_file_is_refused_before_it_is_read(checkpoint_file, tmp_path):
    """A valid model with a 4 GiB tensor appended whose bytes are a hole in a sparse file (a few kB on
    disk): refused from its header, never read (the issue saw 2.3 GB resident before the error)."""
    header, body = _split(checkpoint_file)
    end = max(entry["data_offsets"][1] for k, entry in header.items() if k != "__metadata__")
    header["extra/junk"] = {"dtype": "U8", "shape": [4 * 2**30], "data_offsets": [end, end + 4 * 2**30]}
    sparse = tmp_path / "sparse.safetensors"
    encoded = json.dumps(header).encode()
    with open(sparse, "wb") as f:
        f.write(len(encoded).to_bytes(8, "little") + encoded + body)
        f.truncate(8 + len(encoded) + end + 4 * 2**30)
    start = time.perf_counter()
    err, peak = _loads_bounded(str(sparse))
    assert isinstance(err, ModelFileError) and "more than this model can use" in str(err)
    assert peak < 16 and time.perf_counter() - start < 10


def test_fuzzed_model_files_load_or_raise_model_file_error_within_a_memory_cap(checkpoint_file):
    """Property: whatever is done to a model file's header and description, load() succeeds or raises
    ModelFileError, and the Python memory it takes stays under 32 MB (the file itself is ~40 kB)."""
    hypothesis = pytest.importorskip("hypothesis")
    st = hypothesis.strategies
    header, body = _split(checkpoint_file)
    raw = open(checkpoint_file, "rb").read()
    json_values = st.recursive(
        st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=True) | st.text(max_size=8),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
        max_leaves=12)
    keys = ["n_envs", "num_timesteps", "seed", "policy", "algo", "policy_kwargs", "hyperparameters", "checkpoint",
            "observation_space", "action_space", "extra_state", "hyperparameters.n_steps", "hyperparameters.gamma",
            "policy_kwargs.net_arch", "checkpoint.state", "checkpoint.state.optimizers", "observation_space.shape",
            "action_space.n", "checkpoint.ep_info_buffer", "checkpoint.target_timesteps"]

    def with_description(edit_key, value) -> bytes:
        d = json.loads(header["__metadata__"]["description"])
        target, *_ = [d]
        *path, last = edit_key.split(".")
        for part in path:
            target = target.get(part) if isinstance(target, dict) else None
        if isinstance(target, dict):
            target[last] = value
        h = {**header, "__metadata__": {**header["__metadata__"], "description": json.dumps(d)}}
        encoded = json.dumps(h).encode()
        return len(encoded).to_bytes(8, "little") + encoded + body

    def with_bytes(position, replacement) -> bytes:
        position %= len(raw)
        return raw[:position] + replacement + raw[position + len(replacement):]

    files = (st.tuples(st.sampled_from(keys), json_values).map(lambda kv: with_description(*kv))
             | st.tuples(st.integers(0, 4000), st.binary(min_size=1, max_size=16)).map(lambda pr: with_bytes(*pr))
             | st.integers(0, len(raw)).map(lambda n: raw[:n])
             | json_values.map(lambda v: (lambda e: len(e).to_bytes(8, "little") + e + body)(json.dumps(v).encode())))

    @hypothesis.settings(max_examples=80, deadline=None, derandomize=True, database=None,
                         suppress_health_check=list(hypothesis.HealthCheck))
    @hypothesis.given(files)
    def load_fuzzed(data):
        err, peak = _loads_bounded(io.BytesIO(data))
        assert err is None or isinstance(err, ModelFileError), repr(err)
        assert peak < 32, f"{peak:.1f} MB"

    load_fuzzed()


# ----------------------------------------------------------------------------- 7. bad CLI input
@pytest.mark.parametrize("argv, message", [
    (["--policy-kwargs", "[1]"], "--policy-kwargs must be a JSON object"),
    (["--policy-kwargs", '{"net_arch": [65536, 65536]}'], "weights between hidden layers; accepted: at most"),
    (["--policy-kwargs", '{"net_arch": [2000000000]}'], "invalid net_arch"),
    (["--policy-kwargs", '{"log_std_init": 1e9}'], "log_std_init must be a number in [-20, 20]"),
    (["--n-envs", "0"], "--n-envs must be a positive integer, got 0"),
    (["--eval-episodes", "0"], "--eval-episodes must be a positive integer, got 0"),
    (["--env", ""], "--env is empty"),
    (["--seed", "-1"], "seed must be"),
], ids=["kwargs-list", "huge-net-arch", "2e9-layer", "log-std-1e9", "n-envs-0", "eval-episodes-0", "env-empty", "seed--1"])
def test_cli_bad_input_is_a_clear_error_with_exit_status_2(argv, message, tmp_path, capsys):
    env = ["--env", "Pendulum-v1"] if "log_std_init" in " ".join(argv) else []
    code, err = _cli([*CLI_SMALL, *env, "--timesteps", "64", "--logdir", str(tmp_path), *argv], capsys)
    assert code == 2 and message in err, err
    assert not list(tmp_path.rglob("*.safetensors"))  # refused before anything was trained or saved


# ----------------------------------------------------------------------------- 11. a grid's parent killed
def _children(pid: int) -> set[int]:
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.update(int(c) for c in f.read().split())
    return out


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc to find the workers")
def test_killing_a_grids_parent_with_sigkill_ends_its_workers(tmp_path):
    grid = subprocess.Popen(
        [sys.executable, "-m", "rlgeom.train", "--algo", "ppo,vpg", "--env", "CartPole-v1", "--timesteps", "10000000",
         "--workers", "2", "--logdir", str(tmp_path), "--eval-episodes", "1"],
        env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 90
        while time.time() < deadline and len(list(tmp_path.rglob("*tfevents*"))) < 2:  # both workers training
            time.sleep(0.2)
        workers = {p for p in _children(grid.pid) if "resource_tracker" not in open(f"/proc/{p}/cmdline").read()}
        assert len(workers) == 2, workers
    finally:
        grid.send_signal(signal.SIGKILL)
        grid.wait()
    deadline = time.time() + 10
    while time.time() < deadline and any(_alive(p) for p in workers):
        time.sleep(0.1)
    survivors = [p for p in workers if _alive(p)]
    for p in survivors:  # never leave them running, even when the test fails
        os.kill(p, signal.SIGKILL)
    assert not survivors


# ----------------------------------------------------------------------------- 12. curves after a resume
# the first resume (tbparse, TensorBoard and rlgeom.compare's reader; the archive) is
# tests/test_checkpoint.py::test_tensorboard_curves_continue_in_the_same_run_without_duplicates
def test_a_second_resume_of_the_same_run_still_has_one_value_per_step(tmp_path):
    tbparse = pytest.importorskip("tbparse")
    agent = _agent(tensorboard_log=str(tmp_path))
    agent.learn(6 * 32, checkpoint_every=32, keep_checkpoints=10)
    run_dir = agent._run_dir
    agent.logger.close()
    for step, more in ((64, 64), (96, 128)):  # resumed twice, each time from before what was logged
        resumed = PPO.load(ckpt.checkpoint_path(os.path.join(run_dir, "checkpoints"), step), env="CartPole-v1")
        resumed.learn(more, reset_num_timesteps=False)
        resumed.logger.close()
    scalars = tbparse.SummaryReader(run_dir).scalars
    assert scalars.groupby(["tag", "step"]).size().max() == 1
    assert sorted(scalars[scalars.tag == "train/n_updates"].step) == [32 * k for k in range(1, 8)]


# ----------------------------------------------------------------------------- issue 30: disks, names, files
def _fill(folder) -> str:
    """A file that takes every free byte of `folder`'s file system (as a disk filled by something else does)."""
    filler = os.path.join(folder, "filler")
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (65536, 4096, 1):  # down to the last byte
            while True:
                try:
                    os.write(fd, b"\0" * block)
                except OSError as err:
                    assert err.errno == errno.ENOSPC
                    break
    finally:
        os.close(fd)
    return filler


def test_resume_latest_on_a_full_disk_is_a_clear_error_and_works_once_space_is_freed(tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=2m"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        assert train_main([*CLI_SMALL, "--timesteps", "128", "--checkpoint-every", "64", "--logdir", str(disk)]) == 0
        run = disk / "CartPole-v1" / "ppo" / "seed0"
        before, filler = _digests(run), _fill(disk)
        code, err = _cli([*CLI_SMALL, "--timesteps", "192", "--resume", "latest", "--logdir", str(disk)], capsys)
        assert code == 1 and "error: no space left to write the TensorBoard events of" in err, err
        assert f"--resume {run / 'checkpoints'}" in err  # it has checkpoints: resuming is what to do
        assert _digests(run) == before  # the run is as it was: no partial rewrite left
        os.remove(filler)
        code, err = _cli([*CLI_SMALL, "--timesteps", "192", "--resume", "latest", "--logdir", str(disk)], capsys)
        assert code == 0 and PPO.load(run / "model.safetensors").num_timesteps == 192
    finally:
        subprocess.run(["umount", "-l", str(disk)])


def test_a_full_disk_without_checkpoints_does_not_suggest_resuming(tmp_path, capsys):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "size=64k"):
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, err = _cli([*CLI_SMALL, "--timesteps", "20000", "--logdir", str(disk)], capsys)
        assert code == 1 and "no space left to write" in err and "--resume" not in err and "try again" in err
    finally:
        subprocess.run(["umount", "-l", str(disk)])
    with pytest.raises(DiskFullError, match=r"try again$"):  # the API: a save of a model without checkpoints
        raise outputs.write_error(str(tmp_path / "m.safetensors"), OSError(errno.ENOSPC, os.strerror(errno.ENOSPC)))


@pytest.mark.parametrize("length", [235, 250, 255])
def test_save_to_any_legal_file_name_length(length, tmp_path, capsys):
    """A name of up to NAME_MAX (255) bytes saves; its temporary name stays within NAME_MAX too."""
    name = "m" * (length - len(".safetensors")) + ".safetensors"
    assert len(os.path.basename(outputs.temp_name(str(tmp_path / name)))) <= outputs.NAME_MAX
    code, err = _cli([*CLI_SMALL, "--timesteps", "32", "--logdir", str(tmp_path / "logs"), "--save", str(tmp_path / name)],
                     capsys)
    assert code == 0 and "instead" not in err and PPO.load(tmp_path / name).num_timesteps == 32
    assert sorted(os.listdir(tmp_path)) == ["logs", name]


def test_save_to_a_name_past_name_max_is_refused_before_training(tmp_path, capsys):
    start = time.perf_counter()
    code, err = _cli([*CLI_SMALL, "--timesteps", "100000", "--logdir", str(tmp_path), "--save", str(tmp_path / ("m" * 250))],
                     capsys)
    assert code == 2 and "has a name of 262 bytes; file names take at most 255" in err
    assert time.perf_counter() - start < 10


def _writer_stuck_in_save(path) -> subprocess.Popen:
    """A process inside save(path) with its temporary file written, waiting before the rename."""
    code = textwrap.dedent(f"""
        import os, time
        from rlgeom.persistence import outputs
        def stuck(fd):
            print("writing", flush=True)
            time.sleep(60)
        outputs.os.fsync = stuck
        outputs.write_atomically({str(path)!r}, b"x" * 1_000_000)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "writing"
    return proc


def test_temporaries_of_killed_savers_are_removed_by_the_next_save_but_never_a_live_ones(tmp_path):
    target = tmp_path / "model.safetensors"
    killed = _writer_stuck_in_save(target)
    killed.send_signal(signal.SIGKILL)  # kill -9 during save(): its temporary stays behind
    killed.wait()
    dead_temps = [n for n in os.listdir(tmp_path) if ".tmp" in n]
    assert len(dead_temps) == 1
    other_host = f"model.safetensors.tmp{killed.pid}-0123abcd-zzzzzz"  # a shared folder: another host's writer
    (tmp_path / other_host).write_bytes(b"theirs")
    live = _writer_stuck_in_save(target)
    try:
        live_temp = set(n for n in os.listdir(tmp_path) if ".tmp" in n) - {*dead_temps, other_host}
        _agent().save(target)
        left = set(n for n in os.listdir(tmp_path) if ".tmp" in n)
        assert left == {*live_temp, other_host}  # the dead writer's is gone; the live one's and the foreign one stay
    finally:
        live.kill()
        live.wait()
    assert PPO.load(target).num_timesteps == 0


@pytest.mark.parametrize("path, message", [
    ("/proc/self/mem", "cannot be read as a model file: Input/output error"),
    ("/dev/zero", "is not a regular file"),
    ("fifo", "is not a regular file"),
    ("folder", "is a folder, not a model file"),
])
def test_loading_a_file_that_is_not_a_regular_file_is_a_model_file_error(path, message, tmp_path):
    if path == "fifo":
        path = str(tmp_path / "fifo.safetensors")
        os.mkfifo(path)  # opening it would wait for a writer forever
    elif path == "folder":
        path = str(tmp_path)
    start = time.perf_counter()
    with pytest.raises(ModelFileError, match=message):
        PPO.load(path)
    assert time.perf_counter() - start < 5
