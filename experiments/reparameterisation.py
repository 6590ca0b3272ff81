"""Reparameterisation invariance of the natural gradient, measured (issue 5, the seed idea).

    python experiments/reparameterisation.py [--timesteps 50000] [--seeds 0,1,2] [--workers 2]
        [--agents npg,trpo,vpg] [--vpg-hp KEY=VALUE ...] [--name reparameterisation]
        [--logdir runs/reparameterisation] [--out experiments/results/geometry]
        [--telemetry-from LOGDIR ...]

Trains NPG, TRPO and VPG on Pendulum-v1 with their presets (agents/presets.py; the preset budget capped
at --timesteps) and the Gaussian scale parameterised as log σ, σ and σ² (policy_kwargs
`scale_parameterisation`), every seed in every parameterisation. The claim under test: the natural
methods (NPG, TRPO) follow (nearly) the same learning curves whichever parameterisation is trained,
VPG does not.

VPG has no Pendulum preset (its defaults are Spinning Up's, under which it barely moves the policy in 50k
steps); --vpg-hp KEY=VALUE ... overrides VPG's hyperparameters on top of its preset (`n_envs=N` sets its
number of envs), in training, in the initial-distribution check and in the one-update check. A rerun
refuses to reuse finished runs whose run.json records a different VPG configuration (use another
--logdir). Example (the tuned-VPG test of RESULTS_geometry.md):

    python experiments/reparameterisation.py --agents vpg --name reparameterisation_vpg \
        --logdir /tmp/reparam_vpg/runs --vpg-hp n_envs=2 n_steps=512 gamma=0.9 gae_lambda=0.95 \
        n_critic_updates=15 batch_size=128 learning_rate=0.01

Before training, the script checks that a seed gives the same initial distribution in all three
parameterisations (same mean on a batch of observations, same σ), and records the check; then it takes
ONE update of each agent from the same first rollout in each parameterisation and records how far apart
(in KL) the three updated policies are, next to the KL of the step itself.

Writes into --out (file names start with --name, default "reparameterisation"):
  reparameterisation_curves.png   one panel per agent, rollout/ep_rew_mean (mean ± 95% t-CI over seeds)
                                  for the three parameterisations; a second row shows the policy's σ (from its logged entropy)
  reparameterisation.md / .json   final returns and σ per (agent, parameterisation), the init check, the
                                  one-update check, the command and the VPG overrides
  geometry_telemetry.png          geometry/quadratic_model_ratio and geometry/cg_residual over training
                                  for NPG and TRPO (from these runs and every --telemetry-from log dir;
                                  only when --agents includes npg or trpo)
  geometry_telemetry.json         per (source, task, agent): median and quartiles of both tags, early/late

Runs go to <logdir>/<parameterisation>/<task>/<agent>/seed<k> (rlgeom.tools.train's grid layout); rerunning
skips finished runs (done.json), as rlgeom.tools.train's grid does.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing
import os
import shlex
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PARAMETERISATIONS = ("log_std", "std", "var")
LABELS = {"log_std": "log σ", "std": "σ", "var": "σ²"}
AGENTS = ("npg", "trpo", "vpg")
ENV = "Pendulum-v1"
RETURN_TAG = "rollout/ep_rew_mean"
TELEMETRY_TAGS = ("geometry/quadratic_model_ratio", "geometry/cg_residual")
RELATIVE_TAG = "geometry/cg_residual_relative"  # derived: cg_residual / gradient_norm (‖(F+λI)x − g‖ / ‖g‖)
FINAL_FRACTION = 0.1  # the final return: mean of the last 10% of the curve's steps (as rlgeom.tools.compare)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--timesteps", type=int, default=50_000, help="cap on each preset's budget (default 50000)")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--agents", default=",".join(AGENTS))
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--logdir", default="runs/reparameterisation")
    p.add_argument("--out", default="experiments/results/geometry")
    p.add_argument("--telemetry-from", nargs="*", default=[], metavar="LOGDIR",
                   help="extra TensorBoard log dirs (e.g. runs/classic_control runs/mujoco) whose NPG/TRPO runs "
                        "are added to the geometry telemetry plot")
    p.add_argument("--vpg-hp", nargs="*", default=[], metavar="KEY=VALUE",
                   help="VPG hyperparameter overrides on top of its preset (n_envs=N sets its number of envs), "
                        "e.g. n_envs=2 n_steps=512 gamma=0.9 learning_rate=0.01")
    p.add_argument("--name", default="reparameterisation",
                   help="stem of the output files (<name>.md, <name>.json, <name>_curves.png)")
    p.add_argument("--skip-training", action="store_true", help="only (re)write the report from existing runs")
    return p


# ---------------------------------------------------------------- per-agent configuration


def overrides_for(algo: str, vpg_hp: list[str]) -> tuple[int | None, list[str]]:
    """(n_envs or None, the KEY=VALUE hyperparameter pairs) that override algo's preset: only VPG has any."""
    if algo != "vpg":
        return None, []
    n_envs, pairs = None, []
    for pair in vpg_hp:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise SystemExit(f"--vpg-hp expects KEY=VALUE pairs, got {pair!r}")
        if key.strip() == "n_envs":
            n_envs = int(value)
            if n_envs < 1:
                raise SystemExit(f"--vpg-hp n_envs must be positive, got {value}")
        else:
            pairs.append(pair)
    return n_envs, pairs


def agent_config(algo: str, vpg_hp: list[str]) -> dict:
    """algo's Pendulum preset with the --vpg-hp overrides applied (as rlgeom.tools.train applies --hp / --n-envs)."""
    from rlgeom.tools.benchmark import algo_preset
    from rlgeom.tools.train import parse_overrides

    cfg = algo_preset(algo, ENV)
    n_envs, pairs = overrides_for(algo, vpg_hp)
    if n_envs is not None:
        cfg["n_envs"] = n_envs
    cfg["hyperparameters"] = {**cfg["hyperparameters"], **parse_overrides(pairs)}
    return cfg


# ---------------------------------------------------------------- the initial-distribution check


def init_check(agents: list[str], seeds: list[int], vpg_hp: list[str] = ()) -> list[dict]:
    """For each (agent, seed): the max |Δ mean| and |Δ log σ| between parameterisations at initialisation."""
    import gymnasium as gym
    import torch

    from rlgeom.agents import AGENTS as REGISTRY

    rng = np.random.default_rng(123)
    space = gym.make(ENV).observation_space
    obs = torch.as_tensor(rng.uniform(space.low, space.high, size=(64, space.shape[0])), dtype=torch.float32)
    rows = []
    for algo in agents:
        cfg = agent_config(algo, list(vpg_hp))
        for seed in seeds:
            means, log_stds = {}, {}
            for param in PARAMETERISATIONS:
                agent = REGISTRY[algo](cfg["policy"], ENV, policy_kwargs={**cfg["policy_kwargs"],
                                                                          "scale_parameterisation": param},
                                       n_envs=cfg["n_envs"], seed=seed, device="cpu", **cfg["hyperparameters"])
                with torch.no_grad():
                    dist = agent.policy.get_distribution(agent.policy.normalize_obs(obs)
                                                         if hasattr(agent.policy, "normalize_obs") else obs)
                    means[param] = dist.mean.clone()
                    log_stds[param] = dist.stddev.log().clone()
                agent.env.close()
            ref = "log_std"
            rows.append({
                "agent": algo, "seed": seed,
                "max_abs_mean_diff": max(float((means[p] - means[ref]).abs().max()) for p in PARAMETERISATIONS),
                "max_abs_log_std_diff": max(float((log_stds[p] - log_stds[ref]).abs().max()) for p in PARAMETERISATIONS),
                "sigma_init": float(log_stds[ref].exp().mean()),
            })
    return rows


ONE_UPDATE_CASES = (("npg", {}), ("trpo", {}), ("vpg", {}), ("npg", {"cg_damping": 1e-4}))


def _gauss_kl(p, q) -> float:
    """Mean over states of KL(p ‖ q) for diagonal Gaussians given as (mean, σ)."""
    (m1, s1), (m2, s2) = p, q
    return float((torch_log(s2 / s1) + (s1 ** 2 + (m1 - m2) ** 2) / (2 * s2 ** 2) - 0.5).sum(-1).mean())


def torch_log(x):
    import torch

    return torch.log(x)


def one_update_check(seeds: list[int], agents: list[str] = AGENTS, vpg_hp: list[str] = ()) -> list[dict]:
    """One update from the same first rollout in each parameterisation (same seed: the first rollout is
    bit-identical, σ₀ = 1). Reports the KL of the step itself and the KL between the updated policies of
    two parameterisations, on the rollout's states. The last case (NPG with cg_damping 1e-4 instead of the
    preset's 0.1) is a diagnostic of where a difference comes from, not a tuned setting. VPG's case uses
    the --vpg-hp configuration (its "override" column shows the preset's entries only)."""
    import torch

    from rlgeom.agents import AGENTS as REGISTRY

    rows = []
    for algo, override in ONE_UPDATE_CASES:
        if algo not in agents:
            continue
        cfg = agent_config(algo, list(vpg_hp))
        for seed in seeds:
            out = {}
            for param in PARAMETERISATIONS:
                agent = REGISTRY[algo](cfg["policy"], ENV, policy_kwargs={**cfg["policy_kwargs"],
                                                                          "scale_parameterisation": param},
                                       n_envs=cfg["n_envs"], seed=seed, device="cpu",
                                       **{**cfg["hyperparameters"], **override})
                agent._reset_env()
                agent._target_timesteps = 10 ** 12
                agent.collect_rollout(None)
                obs = agent.buffer.obs.reshape(-1, agent.buffer.obs.shape[-1]).clone()
                with torch.no_grad():
                    d = agent.policy.get_distribution(obs)
                    before = (d.mean.clone(), d.stddev.clone())
                agent.update(agent.buffer, 1.0)
                with torch.no_grad():
                    d = agent.policy.get_distribution(obs)
                    after = (d.mean.clone(), d.stddev.clone())
                agent.env.close()
                out[param] = (obs, before, after)
            ref = out["log_std"]
            rows.append({
                "agent": algo, "override": override, "seed": seed, "n_envs": cfg["n_envs"],
                "hyperparameters": cfg["hyperparameters"],
                "same_first_rollout": all(torch.equal(out[p][0], ref[0]) for p in PARAMETERISATIONS),
                "step_kl_log_std": _gauss_kl(ref[1], ref[2]),
                "kl_between_updated": {p: _gauss_kl(ref[2], out[p][2]) for p in ("std", "var")},
                "sigma_after": {p: float(out[p][2][1].mean()) for p in PARAMETERISATIONS},
            })
    return rows


# ---------------------------------------------------------------- training


def specs_for(args, param: str) -> list[dict]:
    """rlgeom.tools.train's grid plan for one parameterisation; VPG is planned on its own when --vpg-hp is given
    (its --n-envs / --hp apply to it alone)."""
    from rlgeom.tools import benchmark, train

    def plan(algos: list[str], n_envs: int | None, pairs: list[str]) -> list[dict]:
        argv = ["--algo", ",".join(algos), "--env", ENV, "--seeds", args.seeds, "--max-timesteps",
                str(args.timesteps), "--workers", str(args.workers), "--device", "cpu",
                "--logdir", os.path.join(args.logdir, param),
                "--policy-kwargs", json.dumps({"scale_parameterisation": param})]
        if n_envs is not None:
            argv += ["--n-envs", str(n_envs)]
        if pairs:
            argv += ["--hp", *pairs]
        return benchmark.plan(train.build_parser().parse_args(argv))

    algos = args.agents.split(",")
    if not args.vpg_hp or "vpg" not in algos:
        return plan(algos, None, [])
    others = [a for a in algos if a != "vpg"]
    return (plan(others, None, []) if others else []) + plan(["vpg"], *overrides_for("vpg", args.vpg_hp))


def check_reuse(spec: dict, vpg_hp: list[str]) -> None:
    """A finished run is reused only if its run.json records the configuration this invocation trains."""
    try:
        recorded = json.loads((Path(spec["run_dir"]) / "run.json").read_text())
    except (OSError, ValueError):
        return
    cfg = agent_config(spec["algo"], vpg_hp)
    wrong = {k: (recorded.get("hyperparameters", {}).get(k), v) for k, v in cfg["hyperparameters"].items()
             if recorded.get("hyperparameters", {}).get(k) != v}
    if recorded.get("n_envs") != cfg["n_envs"]:
        wrong["n_envs"] = (recorded.get("n_envs"), cfg["n_envs"])
    if wrong:
        raise SystemExit(f"{spec['run_dir']} is a finished run of another configuration (recorded, wanted: {wrong}); "
                         "use another --logdir")


def train_all(args, specs: list[dict]) -> list[dict]:
    """Every (parameterisation, agent, seed) run in one pool of fresh spawn workers; finished runs skipped."""
    from rlgeom.tools.benchmark import read_done, run_in_worker, set_aside

    pending, records = [], []
    for spec in specs:
        done = read_done(spec["run_dir"])
        if done is not None:
            check_reuse(spec, args.vpg_hp)
            records.append({**done, "status": "skipped (done)"})
            continue
        set_aside(spec["run_dir"])
        pending.append(spec)
    print(f"reparameterisation: {len(specs)} runs, {len(pending)} to train, {args.workers} workers", flush=True)
    kwargs = {"max_tasks_per_child": 1} if sys.version_info >= (3, 11) else {}
    with cf.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn"), **kwargs) as pool:
        futures = [pool.submit(run_in_worker, spec) for spec in pending]
        for i, future in enumerate(cf.as_completed(futures), 1):
            r = future.result()
            records.append(r)
            msg = (f"FAILED: {r.get('error')} ({r.get('log')})" if r["status"] == "failed"
                   else f"eval {r.get('eval_return', float('nan')):.1f}, {r.get('wall_s', 0):.0f} s")
            print(f"[{i}/{len(pending)}] {r['run_dir']}: {msg}", flush=True)
    return records


# ---------------------------------------------------------------- reading and summarising


def load(logdir: Path) -> dict:
    """{param: {agent: [Run, ...]}} for the runs under logdir/<param>."""
    from rlgeom.persistence.runlogs import load_runs

    out = {}
    for param in PARAMETERISATIONS:
        d = logdir / param
        if not d.is_dir():
            continue
        for run in load_runs(d):
            if run.task == ENV:
                out.setdefault(param, {}).setdefault(run.agent, []).append(run)
    for by_agent in out.values():
        for runs in by_agent.values():
            runs.sort(key=lambda r: int(r.seed))
    return out


def final_value(curve) -> float:
    lo = curve.steps[-1] - FINAL_FRACTION * (curve.steps[-1] - curve.steps[0])
    return float(curve.values[curve.steps >= lo].mean())


def t_ci(values) -> float | None:
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        return None
    from scipy import stats

    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


def curve_band(runs, tag: str, points: int = 200):
    """Common step grid, mean and 95% t half-width over seeds of one tag (None if a run lacks it)."""
    curves = [r.scalars.get(tag) for r in runs]
    if any(c is None or len(c.steps) < 2 for c in curves):
        return None
    lo = max(c.steps[0] for c in curves)
    hi = min(c.steps[-1] for c in curves)
    grid = np.linspace(lo, hi, points)
    ys = np.stack([np.interp(grid, c.steps, c.values) for c in curves])
    mean = ys.mean(axis=0)
    if len(curves) < 2:
        return grid, mean, np.zeros_like(mean)
    from scipy import stats

    half = stats.t.ppf(0.975, len(curves) - 1) * ys.std(axis=0, ddof=1) / math.sqrt(len(curves))
    return grid, mean, half


def summarise(runs: dict) -> list[dict]:
    rows = []
    for algo in AGENTS:
        for param in PARAMETERISATIONS:
            rs = runs.get(param, {}).get(algo, [])
            if not rs:
                continue
            finals = [final_value(r.scalars[RETURN_TAG]) for r in rs if RETURN_TAG in r.scalars]
            evals = []
            for r in rs:
                try:
                    evals.append(float(json.loads((r.path / "done.json").read_text())["eval_return"]))
                except (OSError, ValueError, KeyError):
                    pass
            band = curve_band(rs, RETURN_TAG)
            auc = float(band[1].mean()) if band is not None else None
            sig = sigma_band(rs)
            sigma_at = ({f"{f:g}": float(np.interp(sig[0][0] + f * (sig[0][-1] - sig[0][0]), sig[0], sig[1]))
                         for f in SIGMA_FRACTIONS} if sig is not None else {})
            rows.append({
                "agent": algo, "parameterisation": param, "seeds": [r.seed for r in rs],
                "final_per_seed": finals, "final_mean": float(np.mean(finals)) if finals else None,
                "final_ci95": t_ci(finals), "mean_over_training": auc,
                "eval_per_seed": evals, "eval_mean": float(np.mean(evals)) if evals else None,
                "budget": int(min(r.last_step() for r in rs)),
                "sigma_at_fraction": sigma_at, "sigma_final_per_seed": [
                    float(np.exp(-r.scalars[ENTROPY_TAG].values[-1] - 0.5 * math.log(2 * math.pi * math.e)))
                    for r in rs if ENTROPY_TAG in r.scalars],
            })
    return rows


def same_seed_gap(runs: dict, algo: str) -> dict | None:
    """Per seed, the largest |difference| of final returns between parameterisations, and the largest
    mean |difference| of the curves; averaged over seeds. Same seed, same initial distribution: for an
    exactly invariant method these are zero up to floating point (and CG truncation / damping)."""
    per_seed_final, per_seed_curve = [], []
    by_param = {p: {r.seed: r for r in runs.get(p, {}).get(algo, [])} for p in PARAMETERISATIONS}
    seeds = set.intersection(*(set(v) for v in by_param.values())) if all(by_param.values()) else set()
    for seed in sorted(seeds):
        curves = [by_param[p][seed].scalars[RETURN_TAG] for p in PARAMETERISATIONS]
        finals = [final_value(c) for c in curves]
        per_seed_final.append(max(finals) - min(finals))
        lo = max(c.steps[0] for c in curves)
        hi = min(c.steps[-1] for c in curves)
        grid = np.linspace(lo, hi, 200)
        ys = np.stack([np.interp(grid, c.steps, c.values) for c in curves])
        per_seed_curve.append(float(np.abs(ys[:, None, :] - ys[None, :, :]).mean(axis=-1).max()))
    if not per_seed_final:
        return None
    return {"seeds": sorted(seeds), "final_range_per_seed": per_seed_final,
            "mean_final_range": float(np.mean(per_seed_final)),
            "max_mean_abs_curve_gap_per_seed": per_seed_curve, "mean_curve_gap": float(np.mean(per_seed_curve))}


# ---------------------------------------------------------------- plots


ENTROPY_TAG = "train/entropy_loss"  # −entropy; Pendulum's action is 1-D, so log σ = entropy − ½ log(2πe)
SIGMA_FRACTIONS = (0.0, 0.25, 0.5, 0.75, 1.0)  # points of the seed-mean σ curve reported (fraction of the run)


def sigma_band(runs, points: int = 200):
    """σ of the policy over training, from the logged entropy of the 1-D Gaussian (mean ± 95% t-CI)."""
    from rlgeom.persistence.runlogs import Curve

    if not runs or any(ENTROPY_TAG not in r.scalars for r in runs):
        return None

    class _R:  # a Run-like holder of the derived σ curve
        def __init__(self, c):
            self.scalars = {"sigma": Curve(c.steps, np.exp(-c.values - 0.5 * math.log(2 * math.pi * math.e)), c.wall)}

    return curve_band([_R(r.scalars[ENTROPY_TAG]) for r in runs], "sigma", points)


def plot_curves(runs: dict, path: Path, title: str, agents=AGENTS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    agents = [a for a in AGENTS if a in agents]
    has_sigma = any(sigma_band(rs) is not None for by_agent in runs.values() for rs in by_agent.values())
    nrows = 2 if has_sigma else 1
    fig, axes = plt.subplots(nrows, len(agents), figsize=(max(5 * len(agents), 7), 3.8 * nrows), squeeze=False)
    colors = {"log_std": "tab:blue", "std": "tab:orange", "var": "tab:green"}
    for j, algo in enumerate(agents):
        ax = axes[0, j]
        for param in PARAMETERISATIONS:
            rs = runs.get(param, {}).get(algo, [])
            band = curve_band(rs, RETURN_TAG) if rs else None
            if band is None:
                continue
            x, m, h = band
            ax.plot(x, m, color=colors[param], label=f"{LABELS[param]} ({len(rs)} seeds)")
            ax.fill_between(x, m - h, m + h, color=colors[param], alpha=0.2)
        ax.set_title(f"{algo.upper()} on {ENV}")
        ax.set_xlabel("environment steps")
        ax.set_ylabel("episode return (rollout/ep_rew_mean)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
        if has_sigma:
            ax = axes[1, j]
            for param in PARAMETERISATIONS:
                band = sigma_band(runs.get(param, {}).get(algo, []))
                if band is None:
                    continue
                x, m, h = band
                ax.plot(x, m, color=colors[param], label=LABELS[param])
                ax.fill_between(x, m - h, m + h, color=colors[param], alpha=0.2)
            ax.set_xlabel("environment steps")
            ax.set_ylabel("policy σ (from train/entropy_loss)")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
    fig.suptitle(textwrap.fill(title, int(12 * fig.get_figwidth())), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def telemetry_sources(args) -> list[tuple[str, Path]]:
    sources = [(f"reparameterisation/{p}", Path(args.logdir) / p) for p in PARAMETERISATIONS]
    sources += [(Path(d).name, Path(d)) for d in args.telemetry_from]
    return [(name, d) for name, d in sources if d.is_dir()]


def telemetry(args, out: Path) -> list[dict]:
    """geometry/quadratic_model_ratio and geometry/cg_residual of every NPG/TRPO run found."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from rlgeom.persistence.runlogs import load_runs

    groups: dict[tuple[str, str, str], list] = {}
    for name, d in telemetry_sources(args):
        for run in load_runs(d):
            if run.agent in ("npg", "trpo") and all(t in run.scalars for t in TELEMETRY_TAGS):
                res, grad = run.scalars["geometry/cg_residual"], run.scalars.get("geometry/gradient_norm")
                if grad is not None and np.array_equal(res.steps, grad.steps):
                    from rlgeom.persistence.runlogs import Curve

                    run.scalars[RELATIVE_TAG] = Curve(res.steps, res.values / np.maximum(grad.values, 1e-30), res.wall)
                groups.setdefault((name, run.task, run.agent), []).append(run)
    if not groups:
        return []
    keys = sorted(groups)
    tags = TELEMETRY_TAGS + (RELATIVE_TAG,)
    fig, axes = plt.subplots(3, 2, figsize=(13, 12.5), squeeze=False)
    cmap = plt.get_cmap("tab20")
    stats = []
    for k, key in enumerate(keys):
        name, task, algo = key
        rs = groups[key]
        color = cmap(k % 20)
        row = {"source": name, "task": task, "agent": algo, "seeds": [r.seed for r in rs]}
        for i, tag in enumerate(tags):
            if any(tag not in r.scalars for r in rs):
                continue
            j = 0 if algo == "npg" else 1
            ax = axes[i, j]
            band = curve_band(rs, tag)
            if band is not None:
                x, m, _ = band
                # progress through the run (0..1) so tasks with different budgets share an axis
                ax.plot((x - x[0]) / max(x[-1] - x[0], 1), m, color=color, lw=1.2, label=f"{task} [{name}] n={len(rs)}")
            values = np.concatenate([r.scalars[tag].values for r in rs])
            values = values[np.isfinite(values)]
            early = np.concatenate([r.scalars[tag].values[: max(1, len(r.scalars[tag].values) // 5)] for r in rs])
            late = np.concatenate([r.scalars[tag].values[-max(1, len(r.scalars[tag].values) // 5):] for r in rs])
            short = tag.split("/")[1]
            if len(values):
                q = np.percentile(values, [25, 50, 75])
                row[short] = {"q25": float(q[0]), "median": float(q[1]), "q75": float(q[2]),
                              "median_first_20pct": float(np.nanmedian(early)),
                              "median_last_20pct": float(np.nanmedian(late)),
                              "n_updates": int(sum(len(r.scalars[tag].values) for r in rs))}
        stats.append(row)
    for i, tag in enumerate(tags):
        for j, algo in enumerate(("npg", "trpo")):
            ax = axes[i, j]
            ax.set_title(f"{algo.upper()}: {tag} (mean over seeds)", fontsize=10)
            ax.set_xlabel("fraction of the run's steps")
            ax.set_yscale("log")
            if tag.endswith("ratio"):
                ax.axhline(1.0, color="k", lw=0.8, ls="--")
            ax.grid(alpha=0.3, which="both")
            if ax.lines:
                ax.legend(fontsize=6, loc="best")
    fig.suptitle("NPG / TRPO geometry telemetry: KL actually taken / KL predicted by ½sᵀFs (top), "
                 "CG residual ‖(F+λI)x − g‖ (middle), relative to ‖g‖ (bottom)", fontsize=10)
    fig.tight_layout()
    fig.savefig(out / "geometry_telemetry.png", dpi=110)
    plt.close(fig)
    (out / "geometry_telemetry.json").write_text(json.dumps(stats, indent=2))
    return stats


# ---------------------------------------------------------------- report


def fmt(x, spec=".1f") -> str:
    return "—" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)


def write_report(args, out: Path, rows, gaps, checks, one_update, wall_s, command: str) -> None:
    lines = [
        "# Reparameterisation of the Gaussian scale: log σ vs σ vs σ² (Pendulum-v1)", "",
        f"Command: `{command}`", "",
        f"Budget: each preset's budget capped at {args.timesteps} steps; seeds {args.seeds}; "
        f"{args.workers} worker processes; device cpu. Training wall time of this invocation: {wall_s:.0f} s.", "",
    ]
    if "vpg" in args.agents.split(","):
        n_envs, pairs = overrides_for("vpg", args.vpg_hp)
        lines += [("VPG: its preset with --vpg-hp " + " ".join(args.vpg_hp) + " (n_envs "
                   + str(n_envs if n_envs is not None else "as preset") + ")") if args.vpg_hp
                  else "VPG: its preset (Spinning Up defaults), no overrides.", ""]
    lines += [
        "Final return = mean of rollout/ep_rew_mean over the last 10% of the run's steps (as rlgeom.tools.compare); "
        "± = 95% Student-t half-width over seeds; 'mean over training' = mean of the seed-averaged curve "
        "(area under the curve / steps); eval = deterministic evaluation after training (done.json).", "",
        "| agent | scale | seeds | final return | per seed | mean over training | eval (mean) | steps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_seed = ", ".join(fmt(v, ".0f") for v in r["final_per_seed"])
        lines.append(f"| {r['agent']} | {LABELS[r['parameterisation']]} | {len(r['seeds'])} | "
                     f"{fmt(r['final_mean'])} ± {fmt(r['final_ci95'])} | {per_seed} | {fmt(r['mean_over_training'])} | "
                     f"{fmt(r['eval_mean'])} | {r['budget']} |")
    lines += ["", "The policy's σ (from train/entropy_loss): the seed-mean curve at 0, 25, 50, 75 and 100% of the run, "
              "and the last logged σ per seed.", "",
              "| agent | scale | σ at 0 / 25 / 50 / 75 / 100% | last σ per seed |", "|---|---|---|---|"]
    for r in rows:
        at = " / ".join(fmt(r["sigma_at_fraction"].get(f"{f:g}"), ".3f") for f in SIGMA_FRACTIONS)
        per_seed = ", ".join(fmt(v, ".3f") for v in r["sigma_final_per_seed"])
        lines.append(f"| {r['agent']} | {LABELS[r['parameterisation']]} | {at} | {per_seed} |")
    lines += ["", "Same seed, different parameterisation (same initial distribution): per seed the range "
              "(max − min) of the three final returns and the largest mean |gap| between two of its three curves; "
              "averaged over seeds.", "",
              "| agent | mean range of final returns, same seed | mean curve gap, same seed |", "|---|---|---|"]
    for algo in AGENTS:
        g = gaps.get(algo)
        if g:
            lines.append(f"| {algo} | {g['mean_final_range']:.1f} | {g['mean_curve_gap']:.1f} |")
    lines += ["", "Initial-distribution check (before training; 64 random observations): largest |Δ| over "
              "parameterisations of the action mean and of log σ.", "",
              "| agent | seed | max \\|Δ mean\\| | max \\|Δ log σ\\| | σ₀ |", "|---|---|---|---|---|"]
    for c in checks:
        lines.append(f"| {c['agent']} | {c['seed']} | {c['max_abs_mean_diff']:.2e} | "
                     f"{c['max_abs_log_std_diff']:.2e} | {c['sigma_init']:.3f} |")
    lines += ["", "One update from the same first rollout (bit-identical across parameterisations for a seed): KL of "
              "the log σ run's step, KL(updated log σ policy ‖ updated σ / σ² policy) on the rollout's states, and σ "
              "after the update (σ₀ = 1)." + (" The cg_damping 1e-4 row is a diagnostic (preset: 0.1), not a tuned setting."
                                             if any(u["override"] for u in one_update) else ""), "",
              "| agent | override | seed | same rollout | step KL | KL to σ run | KL to σ² run | σ after: log σ / σ / σ² |",
              "|---|---|---|---|---|---|---|---|"]
    for u in one_update:
        sig = " / ".join(f"{u['sigma_after'][p]:.4f}" for p in PARAMETERISATIONS)
        shown = (json.dumps(u["override"]) if u["override"]
                 else "--vpg-hp" if u["agent"] == "vpg" and args.vpg_hp else "preset")
        lines.append(f"| {u['agent']} | {shown} | {u['seed']} | "
                     f"{u['same_first_rollout']} | {u['step_kl_log_std']:.2e} | {u['kl_between_updated']['std']:.1e} | "
                     f"{u['kl_between_updated']['var']:.1e} | {sig} |")
    lines += ["", f"![curves]({args.name}_curves.png)", ""]
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    (out / f"{args.name}.json").write_text(json.dumps(
        {"command": command, "timesteps_cap": args.timesteps, "seeds": args.seeds, "agents": args.agents,
         "vpg_hp": args.vpg_hp, "logdir": args.logdir, "rows": rows,
         "same_seed_gaps": gaps, "init_check": checks, "one_update_check": one_update}, indent=2, default=str))


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    command = "python experiments/reparameterisation.py " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
    os.chdir(ROOT)
    import torch

    torch.set_num_threads(1)  # as the grid's workers; more threads only contend on a shared CPU
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    agents = args.agents.split(",")
    unknown = [a for a in agents if a not in AGENTS]
    if unknown:
        raise SystemExit(f"--agents: unknown {unknown}; accepted: {', '.join(AGENTS)}")
    specs = [] if args.skip_training else [s for param in PARAMETERISATIONS for s in specs_for(args, param)]
    checks = init_check(agents, seeds, args.vpg_hp)
    for c in checks:
        print(f"init check {c['agent']} seed {c['seed']}: |Δmean| {c['max_abs_mean_diff']:.1e}, "
              f"|Δlogσ| {c['max_abs_log_std_diff']:.1e}", flush=True)
    one_update = one_update_check(seeds, agents, args.vpg_hp)
    for u in one_update:
        print(f"one update {u['agent']} {u['override'] or ''} seed {u['seed']}: step KL {u['step_kl_log_std']:.2e}, "
              f"KL between updated {u['kl_between_updated']}", flush=True)
    start = time.perf_counter()
    failed = []
    if not args.skip_training:
        failed = [r for r in train_all(args, specs) if r.get("status") == "failed"]
    wall = time.perf_counter() - start
    runs = load(Path(args.logdir))
    rows = summarise(runs)
    gaps = {algo: g for algo in AGENTS if (g := same_seed_gap(runs, algo))}
    hp_note = f"VPG: preset + {' '.join(args.vpg_hp)}" if args.vpg_hp and "vpg" in agents else "preset hyperparameters"
    plot_curves(runs, out / f"{args.name}_curves.png",
                f"{ENV}, scale parameterised as log σ / σ / σ², {hp_note}, cap {args.timesteps} steps, "
                f"seeds {args.seeds}; mean ± 95% t-CI over seeds", agents)
    write_report(args, out, rows, gaps, checks, one_update, wall, command)
    stats = telemetry(args, out) if {"npg", "trpo"} & set(agents) else []
    print(f"wrote {out}/{args.name}.md, {args.name}_curves.png"
          + (", geometry_telemetry.png" if stats else ""), flush=True)
    for f in failed:
        print(f"FAILED {f['run_dir']}: {f.get('error')} ({f.get('log')})", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
