"""Learning benchmarks of rlgeom (issue 2: core/PPO; issue 3: NPG/TRPO), and PPO training speed.

    python experiments/bench_learning.py run JOB [JOB ...]   # jobs run back to back in this process
    python experiments/bench_learning.py speed               # figure 5: PPO FPS vs SB3 PPO vs raw env
    python experiments/bench_learning.py report              # tables + PNGs from the saved JSON

A JOB is LIB:ALGO:ENV:SEED:TIMESTEPS:EVAL_EVERY[:K=V,K=V...], LIB in {rlgeom, sb3}; sb3 runs SB3's PPO or
sb3-contrib's TRPO with the hyperparameters of rlgeom's preset (agents.presets) for that task.
EVAL_EVERY = 0: one deterministic evaluation at the end only. The optional K=V list overrides
preset hyperparameters on both sides (an ablation; the result file name gets a suffix). Every job writes
experiments/results/learning/<lib>_<algo>_<env>_s<seed>_<timesteps>.json (JSON, no pickle).

Protocol (both libraries): deterministic actions, 10 episodes on a separate single env seeded
seed + 10_000 (the same initial states for both libraries), raw (un-normalised) returns; an
evaluation during training runs inside a callback and its wall time is subtracted from the
training time, so FPS = training steps / (learn() wall time - evaluation wall time).
torch.set_num_threads(1) everywhere.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time

import numpy as np
import torch

torch.set_num_threads(1)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
OUT_DIR = os.path.join(ROOT, "experiments", "results", "learning")
EVAL_EPISODES = 10
EVAL_SEED_OFFSET = 10_000
TARGET = {"CartPole-v1": 475.0}


# ------------------------------------------------------------------------------------- helpers
def git_state() -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as err:  # pragma: no cover
            return f"unavailable ({err})"

    dirty = git("status", "--porcelain")
    return {"commit": git("rev-parse", "HEAD"), "dirty_files": dirty.splitlines() if dirty else []}


def machine() -> dict:
    import gymnasium
    import stable_baselines3

    try:
        import sb3_contrib
        contrib = sb3_contrib.__version__
    except ImportError:  # pragma: no cover
        contrib = None
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except Exception:
        pass
    return {"cpu": cpu, "n_cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(), "gymnasium": gymnasium.__version__,
            "sb3": stable_baselines3.__version__, "sb3_contrib": contrib, "loadavg_start": os.getloadavg()}


def sb3_schedule(spec):
    """rlgeom's schedule dict -> SB3's callable of progress_remaining."""
    if isinstance(spec, dict):
        if spec.get("kind") == "linear":
            start, end = float(spec["start"]), float(spec["end"])
            return lambda p: end + (start - end) * p
        return float(spec["value"])
    return spec


def sb3_policy_kwargs(policy_kwargs: dict) -> dict:
    import torch.nn as nn

    out = dict(policy_kwargs)
    if "activation_fn" in out:
        out["activation_fn"] = {"tanh": nn.Tanh, "relu": nn.ReLU}[out["activation_fn"]]
    return out


def _float_stats(stats: dict) -> dict:
    return {k: float(v) for k, v in stats.items()}


# ------------------------------------------------------------------------------- evaluation
class SB3Evaluator:
    """Deterministic episodes of an SB3 model on a plain gymnasium env (seeded once, like rlgeom's)."""

    def __init__(self, env_id: str, seed: int):
        import gymnasium as gym

        self.env, self.seed = gym.make(env_id), seed

    def __call__(self, model, n_episodes: int) -> tuple[float, float]:
        vecnorm = model.get_vec_normalize_env()
        returns, obs = [], self.env.reset(seed=self.seed)[0]
        total = 0.0
        while len(returns) < n_episodes:
            o = vecnorm.normalize_obs(obs[None]) if vecnorm is not None else obs[None]
            action, _ = model.predict(o, deterministic=True)
            obs, reward, terminated, truncated, _ = self.env.step(action[0])
            total += float(reward)
            if terminated or truncated:
                returns.append(total)
                total = 0.0
                obs = self.env.reset()[0]
        return float(np.mean(returns)), float(np.std(returns))


class RLGeomEvaluator:
    """rlgeom.training.evaluation.evaluate on a separate single env (seeded at each evaluation)."""

    def __init__(self, env_id: str, seed: int):
        from rlgeom.envs import make_vec_env

        self.env, self.seed = make_vec_env(env_id, 1, device="cpu"), seed

    def __call__(self, agent, n_episodes: int) -> tuple[float, float]:
        from rlgeom.training.evaluation import evaluate

        was_training = agent.policy.training
        mean, std = evaluate(agent, self.env, n_episodes, deterministic=True, seed=self.seed)
        agent.policy.train(was_training)
        return mean, std


def make_recorder(evaluator, eval_every: int):
    from stable_baselines3.common.callbacks import BaseCallback

    class Recorder(BaseCallback):
        """Periodic deterministic evaluation (timed separately) and training ep_rew_mean per rollout."""

        def __init__(self):
            super().__init__(verbose=0)
            self.evals, self.train_curve, self.sb3_train_stats = [], [], []
            self.eval_time = 0.0
            self.next_eval = eval_every if eval_every > 0 else None

        def _evaluate(self):
            t = time.perf_counter()
            mean, std = evaluator(self.model, EVAL_EPISODES)
            self.eval_time += time.perf_counter() - t
            self.evals.append([int(self.model.num_timesteps), mean, std])

        def _on_step(self) -> bool:
            if self.next_eval is not None and self.model.num_timesteps >= self.next_eval:
                self._evaluate()
                while self.next_eval <= self.model.num_timesteps:
                    self.next_eval += eval_every
            return True

        def _on_rollout_end(self) -> None:
            buf = self.model.ep_info_buffer
            if buf:
                self.train_curve.append([int(self.model.num_timesteps), float(np.mean([e["r"] for e in buf]))])
            values = getattr(self.model.logger, "name_to_value", None)  # SB3: last update's train/ values
            if values is not None and hasattr(self.model, "_n_updates") and values:
                self.sb3_train_stats.append({k: float(v) for k, v in values.items() if k.startswith("train/")})

    return Recorder()


# -------------------------------------------------------------------------------------- jobs
def job_path(lib, algo, env_id, seed, timesteps, tag="") -> str:
    return os.path.join(OUT_DIR, f"{lib}_{algo}_{env_id}_s{seed}_{timesteps}{tag}.json")


def apply_overrides(cfg: dict, overrides: dict) -> dict:
    cfg["hyperparameters"].update(overrides)
    return cfg


def run_rlgeom(algo, env_id, seed, timesteps, eval_every, overrides=None) -> dict:
    from rlgeom.agents import AGENTS
    from rlgeom.agents.presets import preset

    cfg = apply_overrides(preset(algo, env_id), overrides or {})
    agent = AGENTS[algo](cfg["policy"], env_id, n_envs=cfg["n_envs"], seed=seed, device="cpu",
                         policy_kwargs=cfg["policy_kwargs"], **cfg["hyperparameters"])
    update_stats = []
    inner = agent.update

    def recorded_update(buffer, progress_remaining):
        stats = inner(buffer, progress_remaining)
        update_stats.append(_float_stats(stats))
        return stats

    agent.update = recorded_update
    evaluator = RLGeomEvaluator(env_id, seed + EVAL_SEED_OFFSET)
    rec = make_recorder(evaluator, eval_every)
    t = time.perf_counter()
    agent.learn(timesteps, callback=rec)
    wall = time.perf_counter() - t
    train_wall = wall - rec.eval_time
    final = evaluator(agent, EVAL_EPISODES)
    train_ep = float(np.mean([e["r"] for e in agent.ep_info_buffer])) if agent.ep_info_buffer else float("nan")
    agent.env.close()
    return {"config": {k: v for k, v in cfg.items()}, "n_envs": agent.n_envs, "timesteps": agent.num_timesteps,
            "wall_s": wall, "eval_wall_s": rec.eval_time, "train_wall_s": train_wall,
            "fps": agent.num_timesteps / train_wall, "final_eval": list(final), "final_train_ep_rew_mean": train_ep,
            "evals": rec.evals, "train_curve": rec.train_curve, "update_stats": update_stats}


def run_sb3(algo, env_id, seed, timesteps, eval_every, overrides=None) -> dict:
    from rlgeom.agents.presets import preset
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.vec_env import VecNormalize

    cfg = apply_overrides(preset(algo, env_id), overrides or {})
    hp = dict(cfg["hyperparameters"])
    norm_obs, norm_rew = hp.pop("normalize_observations", False), hp.pop("normalize_reward", False)
    venv = make_vec_env(env_id, n_envs=cfg["n_envs"], seed=seed)
    if norm_obs or norm_rew:
        venv = VecNormalize(venv, norm_obs=norm_obs, norm_reward=norm_rew, gamma=hp.get("gamma", 0.99))
    pk = sb3_policy_kwargs(cfg["policy_kwargs"])
    if algo == "trpo":
        from sb3_contrib import TRPO

        from rlgeom.tools.benchmark import sb3contrib_kl_convention

        if "max_kl" in hp:
            hp["target_kl"] = hp.pop("max_kl")
        # sb3-contrib averages the KL over a Box's action dimensions: the same step needs target_kl and
        # cg_damping / k (the presets carry rlgeom's true-KL values since the KL-convention finding)
        hp = sb3contrib_kl_convention(hp, venv.action_space)
        hp = {k: sb3_schedule(v) for k, v in hp.items()}
        model = TRPO(cfg["policy"], venv, seed=seed, device="cpu", verbose=0, policy_kwargs=pk, **hp)
    elif algo == "ppo":
        from stable_baselines3 import PPO

        hp = {k: sb3_schedule(v) for k, v in hp.items()}
        model = PPO(cfg["policy"], venv, seed=seed, device="cpu", verbose=0, policy_kwargs=pk, **hp)
    else:
        raise ValueError(f"no SB3 counterpart for {algo}")
    evaluator = SB3Evaluator(env_id, seed + EVAL_SEED_OFFSET)
    rec = make_recorder(evaluator, eval_every)
    t = time.perf_counter()
    model.learn(timesteps, callback=rec)
    wall = time.perf_counter() - t
    train_wall = wall - rec.eval_time
    final = evaluator(model, EVAL_EPISODES)
    buf = model.ep_info_buffer
    train_ep = float(np.mean([e["r"] for e in buf])) if buf else float("nan")
    venv.close()
    return {"sb3_hyperparameters": {k: (repr(v) if callable(v) else v) for k, v in hp.items()},
            "sb3_policy_kwargs": {k: repr(v) for k, v in pk.items()}, "sb3_policy": repr(model.policy),
            "n_envs": cfg["n_envs"], "timesteps": int(model.num_timesteps), "wall_s": wall,
            "eval_wall_s": rec.eval_time, "train_wall_s": train_wall, "fps": model.num_timesteps / train_wall,
            "final_eval": list(final), "final_train_ep_rew_mean": train_ep, "evals": rec.evals,
            "train_curve": rec.train_curve, "update_stats": rec.sb3_train_stats}


def run_job(spec: str) -> dict:
    from rlgeom.agents.config import parse_hp_value

    lib, algo, env_id, seed, timesteps, eval_every, *extra = spec.split(":")
    seed, timesteps, eval_every = int(seed), int(timesteps), int(eval_every)
    overrides = {}
    for pair in (extra[0].split(",") if extra and extra[0] else []):
        k, _, v = pair.partition("=")
        overrides[k] = parse_hp_value(v)
    tag = ("_" + "_".join(f"{k}-{v}" for k, v in overrides.items())) if overrides else ""
    print(f"[{time.strftime('%H:%M:%S')}] start {spec}", flush=True)
    fn = run_rlgeom if lib == "rlgeom" else run_sb3
    result = fn(algo, env_id, seed, timesteps, eval_every, overrides)
    result.update({"overrides": overrides, "tag": tag})
    result.update({"lib": lib, "algo": algo, "env": env_id, "seed": seed, "budget": timesteps,
                   "eval_every": eval_every, "job": spec, "command": "python experiments/bench_learning.py run " + spec,
                   "machine": machine(), "git": git_state(), "loadavg_end": os.getloadavg(),
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")})
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(job_path(lib, algo, env_id, seed, timesteps, tag), "w") as f:
        json.dump(result, f, indent=1)
    print(f"[{time.strftime('%H:%M:%S')}] done  {spec}: final eval {result['final_eval'][0]:.1f} ± "
          f"{result['final_eval'][1]:.1f}, train ep_rew_mean {result['final_train_ep_rew_mean']:.1f}, "
          f"{result['fps']:.0f} steps/s (train {result['train_wall_s']:.1f} s, eval {result['eval_wall_s']:.1f} s)",
          flush=True)
    return result


# ------------------------------------------------------------------------------------- speed
def speed(steps_cartpole: int = 50_000, steps_hopper: int = 20_000, repeats: int = 2) -> None:
    """Figure 5: PPO training FPS (rlgeom vs SB3, same preset hyperparameters) vs raw env rate."""
    from bench_speed import env_rate  # the env's own random-action rate, as experiments/bench_speed.py measures it

    rows = []
    for env_id, steps in (("CartPole-v1", steps_cartpole), ("Hopper-v5", steps_hopper)):
        from rlgeom.agents.presets import preset

        n_envs = preset("ppo", env_id)["n_envs"]
        for rep in range(repeats):  # interleaved back to back: raw env, rlgeom, SB3
            raw = env_rate(env_id, n_envs, steps)
            ours = run_rlgeom("ppo", env_id, rep, steps, 0)
            theirs = run_sb3("ppo", env_id, rep, steps, 0)
            row = {"env": env_id, "n_envs": n_envs, "steps": steps, "repeat": rep, "raw_env_fps": raw,
                   "rlgeom_fps": ours["fps"], "sb3_fps": theirs["fps"], "ratio": ours["fps"] / theirs["fps"],
                   "loadavg": os.getloadavg()}
            rows.append(row)
            print(json.dumps(row), flush=True)
    os.makedirs(OUT_DIR, exist_ok=True)
    with open(os.path.join(OUT_DIR, "speed_ppo.json"), "w") as f:
        json.dump({"rows": rows, "machine": machine(), "git": git_state(),
                   "command": "python experiments/bench_learning.py speed",
                   "finished": time.strftime("%Y-%m-%d %H:%M:%S")}, f, indent=1)


# ------------------------------------------------------------------------------------ report
def load_all() -> list[dict]:
    out = []
    for name in sorted(os.listdir(OUT_DIR)):
        if name.endswith(".json") and not name.startswith("speed"):
            with open(os.path.join(OUT_DIR, name)) as f:
                out.append(json.load(f))
    return out


def first_reach(evals, target):
    for step, mean, _ in evals:
        if mean >= target:
            return step
    return None


def stable_from(evals, target):
    """First evaluation step from which every later evaluation (the final one included) is ≥ target."""
    step = None
    for s, mean, _ in evals:
        if mean >= target:
            step = s if step is None else step
        else:
            step = None
    return step


def fmt(x, nd=1):
    return "—" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def telemetry(r: dict) -> str:
    us = r.get("update_stats") or []
    if not us:
        return ""
    if r["lib"] == "rlgeom" and "geometry/kl" in us[0]:
        kl = np.array([u["geometry/kl"] for u in us])
        acc = [u.get("geometry/line_search_accepted") for u in us]
        s = f"KL med {np.median(kl):.4f} max {kl.max():.4f}"
        if acc[0] is not None:
            s += f"; accepted {int(np.sum(acc))}/{len(acc)}; backtracks mean {np.mean([u['geometry/line_search_backtracks'] for u in us]):.2f}"
        s += f"; skipped {int(us[-1].get('train/skipped_updates', 0))}"
        return s
    if r["lib"] == "sb3" and us and "train/kl_divergence_loss" in us[-1]:
        kl = np.array([u["train/kl_divergence_loss"] for u in us if "train/kl_divergence_loss" in u])
        acc = [u.get("train/is_line_search_success", np.nan) for u in us]
        return f"sb3-reported KL med {np.median(kl):.4f} max {kl.max():.4f}; accepted {int(np.nansum(acc))}/{len(acc)}"
    if "train/approx_kl" in us[-1]:
        kl = np.array([u["train/approx_kl"] for u in us])
        return f"approx KL med {np.median(kl):.4f}; clip frac (last) {us[-1].get('train/clip_fraction', float('nan')):.3f}"
    return ""


def report() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = load_all()
    lines = []
    # Figure 1: CartPole learning curves.
    cart = [r for r in runs if r["env"] == "CartPole-v1" and r["eval_every"] > 0]
    lines.append("### CartPole-v1: first step with deterministic eval ≥ 475 (eval every 10k steps, 10 episodes)\n")
    lines.append("| lib | algo | seed | budget | first step ≥ 475 | ≥ 475 from then on, from | final eval (mean ± std) | best periodic eval | train ep_rew_mean (last 100 ep) | FPS (excl. eval) | telemetry |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in sorted(cart, key=lambda r: (r["lib"], r["algo"], r["seed"])):
        fr = first_reach(r["evals"] + [[r["timesteps"], *r["final_eval"]]], TARGET["CartPole-v1"])
        st = stable_from(r["evals"] + [[r["timesteps"], *r["final_eval"]]], TARGET["CartPole-v1"])
        best = max((e[1] for e in r["evals"]), default=float("nan"))
        lines.append(f"| {r['lib']} | {r['algo']} | {r['seed']} | {r['budget']} | {fr if fr is not None else 'not reached'} | {st if st is not None else 'not stable'} | "
                     f"{fmt(r['final_eval'][0])} ± {fmt(r['final_eval'][1])} | {fmt(best)} | {fmt(r['final_train_ep_rew_mean'])} | "
                     f"{r['fps']:.0f} | {telemetry(r)} |")
    lines.append("")
    if cart:
        steps = sorted({e[0] for r in cart for e in r["evals"]})
        lines.append("Deterministic eval return (10 episodes) at each periodic evaluation, then after training:\n")
        lines.append("| run | " + " | ".join(f"{s // 1000}k" for s in steps) + " | final |")
        lines.append("|---|" + "---|" * (len(steps) + 1))
        for r in sorted(cart, key=lambda r: (r["lib"], r["algo"], r["seed"])):
            by = {e[0]: e[1] for e in r["evals"]}
            lines.append(f"| {r['lib']} {r['algo']} s{r['seed']} | " + " | ".join(fmt(by.get(s), 0) for s in steps)
                         + f" | {fmt(r['final_eval'][0], 0)} |")
        lines.append("")
    if cart:
        algos = sorted({(r["lib"], r["algo"]) for r in cart})
        fig, axes = plt.subplots(1, len(algos), figsize=(4.2 * len(algos), 3.4), squeeze=False)
        for ax, (lib, algo) in zip(axes[0], algos):
            for r in sorted((r for r in cart if (r["lib"], r["algo"]) == (lib, algo)), key=lambda r: r["seed"]):
                ev = np.array(r["evals"] + [[r["timesteps"], *r["final_eval"]]])
                ax.plot(ev[:, 0], ev[:, 1], marker="o", ms=3, label=f"seed {r['seed']}")
            ax.axhline(475, color="k", ls="--", lw=0.8)
            ax.set_title(f"{lib} {algo.upper()} CartPole-v1")
            ax.set_xlabel("env steps")
            ax.set_ylabel("deterministic eval return")
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(ROOT, "experiments", "cartpole_learning.png"), dpi=110)
        plt.close(fig)
    # Figure 2: pairs rlgeom vs sb3(-contrib) at equal steps.
    lines.append("### rlgeom vs SB3 / sb3-contrib, same hyperparameters, same process, back to back\n")
    lines.append("| env | algo | seed | budget | rlgeom final eval | sb3 final eval | rlgeom train ep_rew_mean | sb3 train ep_rew_mean | rlgeom FPS | sb3 FPS | FPS ratio | rlgeom telemetry | sb3 telemetry |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    by_key = {(r["lib"], r["algo"], r["env"] + r.get("tag", ""), r["seed"], r["budget"]): r for r in runs}
    pairs = []
    for (lib, algo, env_id, seed, budget), r in sorted(by_key.items(), key=lambda kv: (kv[0][2], kv[0][1], kv[0][3])):
        other = by_key.get(("sb3", algo, env_id, seed, budget))
        if lib != "rlgeom" or other is None:
            continue
        pairs.append((r, other))
        lines.append(f"| {env_id.replace('_', ' ')} | {algo} | {seed} | {budget} | {fmt(r['final_eval'][0])} ± {fmt(r['final_eval'][1])} | "
                     f"{fmt(other['final_eval'][0])} ± {fmt(other['final_eval'][1])} | {fmt(r['final_train_ep_rew_mean'])} | "
                     f"{fmt(other['final_train_ep_rew_mean'])} | {r['fps']:.0f} | {other['fps']:.0f} | "
                     f"{r['fps'] / other['fps']:.2f}× | {telemetry(r)} | {telemetry(other)} |")
    lines.append("")
    if pairs:
        envs_ = sorted({p[0]["env"] + p[0].get("tag", "") for p in pairs})
        fig, axes = plt.subplots(1, len(envs_), figsize=(4.5 * len(envs_), 3.4), squeeze=False)
        for ax, env_id in zip(axes[0], envs_):
            for r, o in (p for p in pairs if p[0]["env"] + p[0].get("tag", "") == env_id):
                for run, ls in ((r, "-"), (o, "--")):
                    tc = np.array(run["train_curve"]) if run["train_curve"] else np.zeros((0, 2))
                    if len(tc):
                        ax.plot(tc[:, 0], tc[:, 1], ls=ls, label=f"{run['lib']} {run['algo']} s{run['seed']}{run.get('tag', '')}")
            ax.set_title(f"{env_id.replace('_normalize_observations-False_normalize_reward-False', ' (no normalisation)')}: train ep_rew_mean", fontsize=8)
            ax.set_xlabel("env steps")
            ax.legend(fontsize=6)
        fig.tight_layout()
        fig.savefig(os.path.join(ROOT, "experiments", "rlgeom_vs_sb3_curves.png"), dpi=110)
        plt.close(fig)
    # Hopper: rlgeom preset vs rlgeom with sb3-contrib's effective trust region vs sb3-contrib.
    groups = {"rlgeom TRPO preset (δ 0.01, λ 0.1)": ("rlgeom", ""),
              "rlgeom TRPO δ 0.03, λ 0.3 (= sb3-contrib's true KL)": ("rlgeom", "_max_kl-0.03_cg_damping-0.3"),
              "sb3-contrib TRPO (target_kl 0.01, λ 0.1)": ("sb3", "")}
    hop = {name: [r for r in runs if r["env"] == "Hopper-v5" and r["algo"] == "trpo" and r["budget"] == 100000
                  and r["lib"] == lib and r.get("tag", "") == tag] for name, (lib, tag) in groups.items()}
    if all(hop.values()):
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for (name, rs), color in zip(hop.items(), ("C0", "C2", "C1")):
            for i, r in enumerate(rs):
                tc = np.array(r["train_curve"])
                ax.plot(tc[:, 0], tc[:, 1], color=color, alpha=0.8, lw=1, label=f"{name}" if i == 0 else None)
        ax.set_title("Hopper-v5, training ep_rew_mean, seeds 0-2", fontsize=9)
        ax.set_xlabel("env steps")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(ROOT, "experiments", "hopper_trpo_kl_convention.png"), dpi=110)
        plt.close(fig)
    # Other MuJoCo runs (no partner).
    lines.append("### Other runs (final deterministic eval, 10 episodes)\n")
    lines.append("| lib | algo | env | overrides | seed | budget | final eval | train ep_rew_mean | FPS | telemetry |")
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    paired = {id(x) for p in pairs for x in p}
    for r in sorted(runs, key=lambda r: (r["env"], r["algo"], r["seed"])):
        if id(r) in paired or (r["env"] == "CartPole-v1" and r["eval_every"] > 0):
            continue
        ov = ", ".join(f"{k}={v}" for k, v in (r.get("overrides") or {}).items()) or "preset"
        lines.append(f"| {r['lib']} | {r['algo']} | {r['env']} | {ov} | {r['seed']} | {r['budget']} | "
                     f"{fmt(r['final_eval'][0])} ± {fmt(r['final_eval'][1])} | {fmt(r['final_train_ep_rew_mean'])} | "
                     f"{r['fps']:.0f} | {telemetry(r)} |")
    lines.append("")
    import glob

    speed_runs = {}
    for path in sorted(glob.glob(os.path.join(ROOT, "experiments", "results", "speed_ppo_run*.json"))) + [
            os.path.join(OUT_DIR, "speed_ppo.json")]:
        if os.path.exists(path):
            with open(path) as f:
                sp = json.load(f)
            speed_runs[sp["finished"]] = sp  # earlier runs are kept as copies; dedupe by finish time
    if speed_runs:
        lines.append("### PPO training speed (steps/s; training only, no evaluation)\n")
        lines.append("| run finished | env | n_envs | steps | repeat | raw env (random actions) | rlgeom PPO | SB3 PPO | rlgeom / SB3 | rlgeom / raw env | load avg (1, 5, 15 min) |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for finished, sp in sorted(speed_runs.items()):
            for row in sp["rows"]:
                lines.append(f"| {finished[11:]} | {row['env']} | {row['n_envs']} | {row['steps']} | {row['repeat']} | {row['raw_env_fps']:.0f} | "
                             f"{row['rlgeom_fps']:.0f} | {row['sb3_fps']:.0f} | {row['ratio']:.2f}× | "
                             f"{row['rlgeom_fps'] / row['raw_env_fps']:.3f} | {', '.join(f'{x:.1f}' for x in row['loadavg'])} |")
        for finished, sp in sorted(speed_runs.items()):
            lines.append(f"\nrun {finished}: `{sp['command']}`, git {sp['git']['commit'][:10]} + {len(sp['git']['dirty_files'])} dirty paths")
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(OUT_DIR, "tables.md"), "w") as f:
        f.write(text)
    print(text)


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in {"run", "speed", "report"}:
        print(__doc__)
        return 2
    if argv[0] == "run":
        for spec in argv[1:]:
            run_job(spec)
    elif argv[0] == "speed":
        speed(*(int(a) for a in argv[1:]))
    else:
        report()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
