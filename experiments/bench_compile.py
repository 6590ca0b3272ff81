"""The compiled path (`compile=`, rlgeom/training/compiled.py) against the plain one, side by side in one process.

    nice python experiments/bench_compile.py --out experiments/results/speed/compile_cpu.json
    python experiments/bench_compile.py --device cuda --n-envs 8 64 --out gpu-out/compile.json   # on a GPU

For each task, agent and number of envs (bench_speed.py's hyperparameters: 2048 steps per rollout), a plain
agent and a compiled one of the same seed are built; each learns one rollout first (for the compiled one
this includes compiling: `first_s`), then they alternate `--repeats` timed learn() calls of `--chunk`
rollouts each, so both see the same machine load. Reported: steady-state steps/s (median of the repeats),
the time of each part of a steady iteration (rollout, update), the compile overhead (compiled first_s −
plain first_s) and, where the compiled path is faster, after how many steps it has paid for its
compilation. One CPU thread (torch.set_num_threads(1), as every CPU benchmark here). Inductor's compiled
kernels are cached on disk between processes (TORCHINDUCTOR_CACHE_DIR), so the first configuration of
each graph shape pays the cold compile and later ones less; the record says which cache was used.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PartTimer:
    """Seconds spent in an agent's collect_rollout and _guarded_update (the clock read after a CUDA sync)."""

    def __init__(self, agent):
        self.seconds = {"rollout": 0.0, "update": 0.0}
        for part, name in (("rollout", "collect_rollout"), ("update", "_guarded_update")):
            setattr(agent, name, self._timed(part, getattr(agent, name), agent.device))

    def _timed(self, part, method, device):
        def timed(*args, **kwargs):
            sync(device)
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                sync(device)
                self.seconds[part] += time.perf_counter() - start
        return timed

    def take(self) -> dict:
        out, self.seconds = self.seconds, {"rollout": 0.0, "update": 0.0}
        return out


def timed_learn(agent, steps: int, first: bool) -> float:
    sync(agent.device)
    start = time.perf_counter()
    agent.learn(steps, reset_num_timesteps=first)
    sync(agent.device)
    return time.perf_counter() - start


def measure(task: str, algo: str, n_envs: int, args) -> dict:
    from bench_speed import hyperparameters
    from rlgeom.agents import AGENTS

    hp = hyperparameters(algo, n_envs)
    rollout = hp["n_steps"] * n_envs
    paths = {"plain": None, "compiled": {"mode": args.mode, "backend": args.backend}}
    agents, timers, first, steady, parts = {}, {}, {}, {k: [] for k in paths}, {k: [] for k in paths}
    for name, mode in paths.items():
        agent = AGENTS[algo]("MlpPolicy", task, n_envs=n_envs, seed=args.seed, device=args.device, compile=mode,
                             threads=1, **hp)
        first[name] = timed_learn(agent, rollout, first=True)  # the compiled one compiles here
        agents[name], timers[name] = agent, PartTimer(agent)
        timers[name].take()
        print(f"  {task} {algo} {n_envs} env(s) {name}: first rollout + update {first[name]:.1f} s", flush=True)
    for _ in range(args.repeats):
        for name in paths:
            seconds = timed_learn(agents[name], args.chunk * rollout, first=False)
            steady[name].append(args.chunk * rollout / seconds)
            parts[name].append({k: v / args.chunk for k, v in timers[name].take().items()})
    for agent in agents.values():
        agent.env.close()
    sps = {name: statistics.median(v) for name, v in steady.items()}
    overhead = first["compiled"] - first["plain"]
    gain_per_step = 1 / sps["plain"] - 1 / sps["compiled"]  # seconds saved per step once compiled
    row = {
        "task": task, "algo": algo, "n_envs": n_envs, "hyperparameters": hp, "device": args.device,
        "compile": {"mode": args.mode, "backend": args.backend}, "first_s": first, "compile_overhead_s": overhead,
        "steps_per_s": sps, "steps_per_s_repeats": steady,
        "per_iteration_s": {name: {k: statistics.median(p[k] for p in ps) for k in ("rollout", "update")}
                            for name, ps in parts.items()},
        "compiled_over_plain": sps["compiled"] / sps["plain"],
        "pays_off_after_steps": max(0, int(overhead / gain_per_step)) if gain_per_step > 0 else None,
    }
    it = row["per_iteration_s"]
    print(f"  {task} {algo} {n_envs} env(s): plain {sps['plain']:,.0f}, compiled {sps['compiled']:,.0f} steps/s "
          f"({row['compiled_over_plain']:.2f}x; rollout {it['plain']['rollout']:.2f} -> {it['compiled']['rollout']:.2f} s, "
          f"update {it['plain']['update']:.2f} -> {it['compiled']['update']:.2f} s); compiling {overhead:.0f} s; "
          f"pays off after {row['pays_off_after_steps']} steps", flush=True)
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--mode", default="auto", help="compile= of the compiled agent (auto: reduce-overhead on CUDA, "
                   "default on the CPU)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (aot_eager: a quick dry run)")
    p.add_argument("--tasks", nargs="*", default=["CartPole-v1", "Hopper-v5"])
    p.add_argument("--algos", nargs="*", default=["ppo", "trpo"])
    p.add_argument("--n-envs", nargs="*", type=int, default=[1, 8])
    p.add_argument("--repeats", type=int, default=2, help="timed learn() calls per path, alternated")
    p.add_argument("--chunk", type=int, default=2, help="rollouts per timed learn() call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_compile: --device cuda needs a CUDA GPU and none is visible", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.processor() or platform.machine()
    record = {"argv": sys.argv, "torch": torch.__version__, "device": args.device, "device_name": name,
              "cpus": os.cpu_count(), "threads": 1, "started": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
              "load_average": os.getloadavg(), "inductor_cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default"),
              "rows": []}
    for task in args.tasks:
        for algo in args.algos:
            for n_envs in args.n_envs:
                record["rows"].append(measure(task, algo, n_envs, args))
                record["load_average_end"] = os.getloadavg()
                if args.out:
                    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
                    with open(args.out, "w") as f:
                        json.dump(record, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
