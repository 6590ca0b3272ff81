"""Figures for experiments/RESULTS_faults.md (issues 17 and 30): memory of loading hostile model files, how
fast grid workers end after their parent is killed, and how fast a grid stops on Ctrl-C.

    python experiments/fault_figures.py --out experiments/results/faults.json
    python experiments/fault_figures.py --only ctrl-c --out /tmp/ctrl_c.json

Each measurement runs in a fresh process (peak resident memory, `ru_maxrss`, is per process).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}

LOAD = """
import json, resource, sys, time
from rlgeom.agents import PPO
from rlgeom.persistence.serialization import ModelFileError
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
try:
    PPO.load(sys.argv[1], env="CartPole-v1")
    outcome = "loaded"
except ModelFileError as err:
    outcome = "ModelFileError: " + str(err).split(": ", 1)[1][:120]
print(json.dumps({"outcome": outcome, "seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "rss_before_load_mb": before / 1024}))
"""


def _load_in_fresh_process(path: str) -> dict:
    out = subprocess.run([sys.executable, "-c", LOAD, path], env=ENV, capture_output=True, text=True, timeout=300)
    return json.loads(out.stdout.strip().splitlines()[-1])


def hostile_files(folder: str) -> dict:
    """A real checkpoint, then the same with a 4 GiB sparse tensor appended and with a 2e9-unit layer."""
    from rlgeom.agents import PPO
    from rlgeom.persistence import checkpoint as ckpt

    agent = PPO("MlpPolicy", "CartPole-v1", seed=0, device="cpu", n_steps=32, batch_size=32, n_epochs=1)
    agent.learn(64, checkpoint_every=64, checkpoint_dir=folder)
    good = ckpt.checkpoint_path(folder, 64)
    raw = open(good, "rb").read()
    n = int.from_bytes(raw[:8], "little")
    header, body = json.loads(raw[8:8 + n]), raw[8 + n:]

    def write(name: str, hdr: dict, size: int | None = None) -> str:
        encoded = json.dumps(hdr).encode()
        path = os.path.join(folder, name)
        with open(path, "wb") as f:
            f.write(len(encoded).to_bytes(8, "little") + encoded + body)
            if size is not None:
                f.truncate(8 + len(encoded) + size)
        return path

    end = len(body)
    sparse = write("sparse.safetensors", {**header, "extra/junk": {"dtype": "U8", "shape": [4 * 2**30],
                                                                  "data_offsets": [end, end + 4 * 2**30]}},
                   end + 4 * 2**30)
    description = json.loads(header["__metadata__"]["description"])
    description["policy_kwargs"] = {"net_arch": [2 * 10**9]}
    layer = write("layer.safetensors", {**header, "__metadata__": {**header["__metadata__"],
                                                                   "description": json.dumps(description)}})
    return {name: {"apparent_bytes": os.path.getsize(p), "bytes_on_disk": os.stat(p).st_blocks * 512,
                   **_load_in_fresh_process(p)}
            for name, p in (("valid checkpoint", good), ("4 GiB sparse tensor appended", sparse),
                            ("2e9-unit layer described", layer))}


def _children(pid: int) -> set[int]:
    out = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            out.update(int(c) for c in f.read().split())
    return {p for p in out if "resource_tracker" not in open(f"/proc/{p}/cmdline").read()}


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def grid_kill(folder: str) -> dict:
    """Seconds from kill -9 of a two-worker grid's parent until both workers are gone."""
    grid = subprocess.Popen([sys.executable, "-m", "rlgeom.train", "--algo", "ppo,vpg", "--env", "CartPole-v1",
                             "--timesteps", "10000000", "--workers", "2", "--logdir", folder],
                            env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and len([p for p in _walk(folder) if "tfevents" in p]) < 2:
        time.sleep(0.2)
    workers = _children(grid.pid)
    grid.send_signal(signal.SIGKILL)
    killed = time.perf_counter()
    grid.wait()
    while any(_alive(p) for p in workers) and time.perf_counter() - killed < 30:
        time.sleep(0.02)
    survivors = [p for p in workers if _alive(p)]
    for p in survivors:
        os.kill(p, signal.SIGKILL)
    return {"workers": len(workers), "seconds_until_gone": time.perf_counter() - killed, "survivors": len(survivors)}


def grid_ctrl_c(folder: str, to: str) -> dict:
    """Seconds from SIGINT (to the grid's process group, or to its process alone) until a grid of four runs on
    two workers has exited; its exit status; event files (runs started) and done.json files after (issue 30)."""
    grid = subprocess.Popen([sys.executable, "-m", "rlgeom.train", "--algo", "ppo,vpg", "--env", "CartPole-v1",
                             "--seeds", "0,1", "--timesteps", "10000000", "--workers", "2", "--hp", "n_steps=32",
                             "--eval-episodes", "1", "--logdir", folder],
                            env=ENV, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    while len([p for p in _walk(folder) if "tfevents" in p]) < 2:
        time.sleep(0.1)
    time.sleep(2)  # both runs well into training
    start = time.perf_counter()
    os.killpg(grid.pid, signal.SIGINT) if to == "group" else grid.send_signal(signal.SIGINT)
    grid.wait(timeout=120)
    return {"signal_to": to, "seconds_until_exit": time.perf_counter() - start, "exit_status": grid.returncode,
            "runs_started": len([p for p in _walk(folder) if "tfevents" in p]),
            "done_json": len([p for p in _walk(folder) if p.endswith("done.json")])}


def _walk(folder: str) -> list[str]:
    return [os.path.join(r, n) for r, _, names in os.walk(folder) for n in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=os.path.join(REPO, "experiments", "results", "faults.json"))
    parser.add_argument("--only", choices=("ctrl-c",), default=None, help="measure only Ctrl-C on a grid (issue 30)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        record = {"grid_ctrl_c": [grid_ctrl_c(os.path.join(folder, f"ctrl-c-{to}"), to) for to in ("group", "parent")]}
        if args.only is None:
            record = {"model_files": hostile_files(os.path.join(folder, "files")),
                      "grid_kill": grid_kill(os.path.join(folder, "grid")), **record}
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(record, f, indent=2)
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
