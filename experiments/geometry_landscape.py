"""Issue 8: the policy's Fisher spectrum over training and the landscape around each final policy.

    python experiments/geometry_landscape.py --env Hopper-v5 --timesteps 1000000 --seeds 0 --workers 8

For each agent of --algos (default TRPO, NPG, PPO, VPG; one missing from agents.AGENTS is skipped
with a message) and each seed, with the task's preset (agents.presets):

1. train for --timesteps with `geometry_every` (TensorBoard tags geometry/* under <out>/runs) and a
   model saved every --timesteps / --saves steps (<out>/runs/.../checkpoints/step*.safetensors);
2. the Fisher spectrum over training: for every saved model, the top-k Fisher eigenvalues and the
   Hutchinson trace on a fixed batch that model collects (rlgeom.geometry.spectrum);
3. around the final policy: 2-D landscapes along filter-normalised random directions, the top two
   Fisher eigenvectors, and the PCA of the run's trajectory, and the sharpness record
   (rlgeom.tools.landscape); then linear interpolations between every pair of final policies of one
   architecture (agents and seeds), with their barrier heights.

Writes <out>/RESULTS.md (command, hardware, seeds, budgets, tables), <out>/*.png and the raw grids in
<out>/data/. Everything is seeded; torch runs on --device (default cpu) with one thread per
process. Budgets: --timesteps per run; the landscape costs --points² surrogate evaluations and
--return-points² return evaluations of --eval-episodes episodes per plot, over --workers processes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import shlex
import sys
import time

import numpy as np
import torch

DEFAULT_ALGOS = ("trpo", "npg", "ppo", "vpg")
GEOMETRY_TAGS = (
    "geometry/fisher_top_eigenvalue", "geometry/fisher_trace", "geometry/fisher_top_over_trace",
    "geometry/gradient_top_k_share", "geometry/value_hessian_top_eigenvalue", "geometry/value_hessian_trace",
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="Hopper-v5", help="task (default Hopper-v5; HalfCheetah-v5 works too)")
    p.add_argument("--algos", default=",".join(DEFAULT_ALGOS), help="comma-separated agents")
    p.add_argument("--timesteps", type=int, default=1_000_000, help="environment steps per run")
    p.add_argument("--seeds", default="0", help="comma-separated seeds")
    p.add_argument("--saves", type=int, default=10, help="models saved over a run (the spectrum's time points)")
    p.add_argument("--geometry-every", type=int, default=10, help="updates between geometry/* logs")
    p.add_argument("--k", type=int, default=5, help="Fisher eigenvalues per saved model")
    p.add_argument("--batch-states", type=int, default=2048, help="states of each fixed batch")
    p.add_argument("--points", type=int, default=21, help="surrogate grid points per axis")
    p.add_argument("--return-points", type=int, default=7, help="return grid points per axis")
    p.add_argument("--eval-episodes", type=int, default=3, help="episodes per return evaluation")
    p.add_argument("--final-eval-episodes", type=int, default=10, help="episodes of the final evaluation")
    p.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes for return grids")
    p.add_argument("--sharpness-directions", type=int, default=50)
    p.add_argument("--epsilon", type=float, default=0.05, help="relative radius of the sharpness directions")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="experiments/geometry", help="output directory")
    return p.parse_args(argv)


def save_callback(directory: str, every: int):
    """An SB3 callback saving the model whenever another `every` steps have passed (between updates)."""
    from stable_baselines3.common.callbacks import BaseCallback

    class SaveEvery(BaseCallback):
        def __init__(self):
            super().__init__()
            self.next_save = 0

        def _on_rollout_start(self) -> None:
            if self.model.num_timesteps >= self.next_save:
                self.model.save(os.path.join(directory, f"step{self.model.num_timesteps:09d}"))
                self.next_save = self.model.num_timesteps + every

        def _on_step(self) -> bool:
            return True

    return SaveEvery()


def train(algo: str, seed: int, args) -> dict:
    from rlgeom.agents import AGENTS
    from rlgeom.agents.presets import preset
    from rlgeom.envs import make_vec_env
    from rlgeom.training.evaluation import evaluate

    cfg = preset(algo, args.env)
    agent = AGENTS[algo](
        cfg["policy"], args.env, n_envs=cfg["n_envs"], seed=seed, device=args.device,
        tensorboard_log=os.path.join(args.out, "runs"), policy_kwargs=cfg["policy_kwargs"],
        geometry_every=args.geometry_every, **cfg["hyperparameters"],
    )
    start = time.perf_counter()
    checkpoints = os.path.join(args.out, "checkpoints", f"{algo}_s{seed}")
    agent.learn(args.timesteps, callback=save_callback(checkpoints, max(1, args.timesteps // args.saves)),
                tb_log_name=algo)
    wall = time.perf_counter() - start
    final = agent.save(os.path.join(checkpoints, f"step{agent.num_timesteps:09d}"))
    env = make_vec_env(args.env, 1, device=agent.device)
    mean, std = evaluate(agent, env, args.final_eval_episodes, deterministic=True, seed=seed + 10_000)
    env.close()
    agent.env.close()
    agent.logger.close()
    return {"algo": algo, "seed": seed, "model": final, "checkpoints": checkpoints, "run_dir": agent._run_dir,
            "timesteps": agent.num_timesteps, "wall_s": wall, "eval_mean": mean, "eval_std": std,
            "preset": cfg["source"], "policy_kwargs": cfg["policy_kwargs"]}


def spectrum_over_training(run: dict, args) -> list[dict]:
    from rlgeom.geometry.fisher import PolicyFisher
    from rlgeom.tools.landscape import checkpoint_files, collect_batch, load_agent
    from rlgeom.geometry.spectrum import fisher_spectrum

    rows = []
    for path in checkpoint_files([run["checkpoints"]]):
        agent, description = load_agent(path, device=args.device)
        batch = collect_batch(agent, args.env, args.batch_states, run["seed"])
        fisher = PolicyFisher(agent.policy.actor, agent.policy.family,
                              agent.policy.actor_inputs(batch.obs).detach(), damping=0.0)
        spec = fisher_spectrum(fisher, k=args.k, n_probes=20, tol=1e-3)
        rows.append({"step": int(description["num_timesteps"]), "eigenvalues": spec.eigenvalues.tolist(),
                     "trace": spec.trace, "effective_condition_number": spec.effective_condition_number,
                     "num_parameters": spec.dim})
    return rows


def geometry_curves(run: dict) -> dict[str, tuple[list, list]]:
    from pathlib import Path

    from rlgeom.persistence.runlogs import read_run

    scalars, _ = read_run(Path(run["run_dir"]))
    return {tag: (c.steps.tolist(), c.values.tolist()) for tag, c in scalars.items() if tag.startswith("geometry/")}


def landscapes(run: dict, args, data_dir: str, out: str) -> dict:
    from rlgeom.tools.landscape import LandscapeError, compute_landscape, compute_sharpness

    stem = f"{run['algo']}_s{run['seed']}"
    opts = dict(env=args.env, points=args.points, return_points=args.return_points, batch_states=args.batch_states,
                eval_episodes=args.eval_episodes, workers=args.workers, seed=run["seed"], progress=False)
    result = {}
    for kind in ("random", "fisher", "pca"):
        extra = {"checkpoints": [run["checkpoints"]]} if kind == "pca" else {}
        try:
            land = compute_landscape(kind, run["model"], dims=2, **opts, **extra)
        except LandscapeError as err:  # e.g. a budget too small for two saves before the final model
            print(f"skipping the {kind} landscape of {stem}: {err}", file=sys.stderr)
            result[kind] = {"skipped": str(err)}
            continue
        paths = land.save(data_dir, f"{stem}_{kind}")
        os.replace(paths["png"], os.path.join(out, f"landscape_{stem}_{kind}.png"))
        result[kind] = {"return_at_model": land.meta.get("return_at_model"), "return_min": float(np.min(land.returns)),
                        "return_max": float(np.max(land.returns)), "seconds": land.meta["timings"]["total_s"],
                        **{k: land.meta[k] for k in ("fisher_eigenvalues", "explained_variance_ratio") if k in land.meta}}
    result["sharpness"] = compute_sharpness(run["model"], env=args.env, batch_states=args.batch_states,
                                            epsilon=args.epsilon, n_directions=args.sharpness_directions,
                                            k=args.k, seed=run["seed"])
    return result


def interpolations(runs: list[dict], args, data_dir: str, out: str) -> list[dict]:
    from rlgeom.tools.landscape import LandscapeError, compute_landscape

    rows = []
    for a, b in itertools.combinations(runs, 2):
        name = f"{a['algo']}_s{a['seed']}__{b['algo']}_s{b['seed']}"
        try:
            land = compute_landscape("interpolate", a["model"], other=b["model"], env=args.env, points=args.points,
                                     return_points=args.return_points, batch_states=args.batch_states,
                                     eval_episodes=args.eval_episodes, workers=args.workers, seed=a["seed"],
                                     progress=False)
        except LandscapeError as err:
            print(f"skipping the interpolation {name}: {err}", file=sys.stderr)
            detail = str(err)
            detail = detail[detail.find("(") + 1 : detail.find(");")] if "(" in detail else detail
            rows.append({"pair": name, "skipped": "skipped, different architectures: " + detail[:90]})
            continue
        paths = land.save(data_dir, f"interpolate_{name}")
        os.replace(paths["png"], os.path.join(out, f"interpolate_{name}.png"))
        rows.append({"pair": name, "return_barrier": land.meta["return_barrier"],
                     "return_barrier_linear": land.meta["return_barrier_linear"],
                     "return_endpoints": [float(land.returns[0]), float(land.returns[-1])],
                     "return_min": float(np.min(land.returns))})
    return rows


def plot_spectra(spectra: dict, curves: dict, out: str) -> list[str]:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    written = []
    fig = Figure(figsize=(11, 4), layout="constrained")
    FigureCanvasAgg(fig)
    ax_top, ax_trace, ax_kappa = fig.subplots(1, 3)
    for name, rows in spectra.items():
        steps = [r["step"] for r in rows]
        line, = ax_top.plot(steps, [r["eigenvalues"][0] for r in rows], "o-", label=name)
        for i in range(1, len(rows[0]["eigenvalues"])):
            ax_top.plot(steps, [r["eigenvalues"][i] for r in rows], "-", color=line.get_color(), alpha=0.3, lw=0.8)
        ax_trace.plot(steps, [r["trace"] for r in rows], "o-", label=name)
        ax_kappa.plot(steps, [r["effective_condition_number"] for r in rows], "o-", label=name)
    for ax, title in ((ax_top, "Fisher top-k eigenvalues (λ₁ bold)"), (ax_trace, "Fisher trace (Hutchinson)"),
                      (ax_kappa, "κ_eff = λ₁·d / tr F")):
        ax.set_yscale("log")
        ax.set_xlabel("environment steps")
        ax.set_title(title, fontsize=10)
    ax_top.legend(fontsize=8)
    path = os.path.join(out, "fisher_spectrum_over_training.png")
    fig.savefig(path, dpi=110)
    written.append(path)

    tags = [t for t in GEOMETRY_TAGS if any(t in c for c in curves.values())]
    if tags:
        rows = (len(tags) + 2) // 3
        fig = Figure(figsize=(4 * min(3, len(tags)), 3.2 * rows + 0.5), layout="constrained")
        FigureCanvasAgg(fig)
        for i, tag in enumerate(tags):
            ax = fig.add_subplot(rows, min(3, len(tags)), i + 1)
            positive = True
            for name, c in curves.items():
                if tag in c:
                    ax.plot(*c[tag], ".-", label=name)
                    positive &= bool(np.all(np.asarray(c[tag][1]) > 0))
            if positive and "share" not in tag:
                ax.set_yscale("log")
            ax.set_title(tag, fontsize=9)
            ax.set_xlabel("environment steps", fontsize=8)
        handles = {h.get_label(): h for ax in fig.axes for h in ax.get_lines()}
        fig.legend(list(handles.values()), list(handles), loc="outside lower center", ncols=len(handles), fontsize=8)
        path = os.path.join(out, "geometry_tags_over_training.png")
        fig.savefig(path, dpi=110)
        written.append(path)
    return written


def hardware() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none used"
    return (f"{platform.platform()}, {os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"GPU {gpu}; Python {platform.python_version()}, torch {torch.__version__}")


def write_results(args, argv, runs, spectra, curves, lands, interps, skipped, pngs, total_s) -> str:
    fmt = lambda x: f"{x:.4g}" if isinstance(x, (int, float)) and x == x else "–"  # noqa: E731
    lines = [
        f"# Fisher spectrum and loss landscapes on {args.env}",
        "",
        "Made by one command (from the repository root):",
        "",
        "```",
        "python experiments/geometry_landscape.py " + " ".join(shlex.quote(a) for a in argv),
        "```",
        "",
        f"- hardware: {hardware()}",
        f"- seeds: {args.seeds}; budget: {args.timesteps} environment steps per run; {args.saves} saves per run; "
        f"geometry_every={args.geometry_every}; device {args.device}",
        f"- fixed batches: {args.batch_states} states; Fisher top-{args.k} by Lanczos (rlgeom.geometry.spectrum), trace by "
        "Hutchinson (20 probes)",
        f"- landscapes: {args.points}×{args.points} surrogate grid, {args.return_points}×{args.return_points} return grid "
        f"of {args.eval_episodes} deterministic episode(s) per point, {args.workers} worker process(es); sharpness: "
        f"{args.sharpness_directions} filter-normalised directions of relative radius ε={args.epsilon}",
        f"- wall time of the whole command: {total_s / 60:.1f} min",
    ]
    if skipped:
        lines += [f"- skipped (not in agents.AGENTS): {', '.join(skipped)}"]
    lines += ["", "## Final policies", "",
              "| run | preset | steps | train wall (s) | eval return | λ₁(F) | tr F | κ_eff | d |",
              "|---|---|---|---|---|---|---|---|---|"]
    for run in runs:
        key = f"{run['algo']}_s{run['seed']}"
        last = spectra[key][-1]
        lines.append(f"| {key} | {run['preset']} | {run['timesteps']} | {run['wall_s']:.0f} | "
                     f"{run['eval_mean']:.1f} ± {run['eval_std']:.1f} | {fmt(last['eigenvalues'][0])} | "
                     f"{fmt(last['trace'])} | {fmt(last['effective_condition_number'])} | {last['num_parameters']} |")
    lines += ["", "## Geometry logged during training (last value of each geometry/ tag)", "",
              "| run | " + " | ".join(t.split("/")[1] for t in GEOMETRY_TAGS) + " |",
              "|---|" + "---|" * len(GEOMETRY_TAGS)]
    for key, c in curves.items():
        lines.append(f"| {key} | " + " | ".join(fmt(c[t][1][-1]) if t in c else "–" for t in GEOMETRY_TAGS) + " |")
    lines += ["", "## Sharpness of the final policies", "",
              "Changes of the surrogate (fixed batch, normalised advantages) and of the mean KL(π ‖ π + εd) over "
              "filter-normalised random directions d (1-D parameters left unperturbed).", "",
              "| run | surrogate Δ mean | std | max | q95 | KL mean | KL max | KL q95 |", "|---|---|---|---|---|---|---|---|"]
    for key, land in lands.items():
        s, k = land["sharpness"]["surrogate"], land["sharpness"]["mean_kl"]
        lines.append(f"| {key} | {fmt(s['mean'])} | {fmt(s['std'])} | {fmt(s['max'])} | {fmt(s['q95'])} | "
                     f"{fmt(k['mean'])} | {fmt(k['max'])} | {fmt(k['q95'])} |")
    lines += ["", "## Return around the final policies (2-D grids)", "",
              "| run | kind | return at the model | min on the grid | max on the grid | grid seconds |", "|---|---|---|---|---|---|"]
    for key, land in lands.items():
        for kind in ("random", "fisher", "pca"):
            r = land[kind]
            if "skipped" in r:
                lines.append(f"| {key} | {kind} | skipped: {r['skipped']} | | | |")
                continue
            lines.append(f"| {key} | {kind} | {fmt(r['return_at_model'])} | {fmt(r['return_min'])} | "
                         f"{fmt(r['return_max'])} | {r['seconds']:.0f} |")
    lines += ["", "## Linear interpolation between final policies", "",
              "Barrier = mean of the endpoint returns − the minimum along the path; 'above the chord' = the largest "
              "dip below the straight line between the endpoints (rlgeom.tools.landscape).", "",
              "| pair | endpoint returns | min along the path | barrier | above the chord |", "|---|---|---|---|---|"]
    for row in interps:
        if "skipped" in row:
            lines.append(f"| {row['pair']} | {row['skipped']} | | | |")
        else:
            lines.append(f"| {row['pair']} | {fmt(row['return_endpoints'][0])}, {fmt(row['return_endpoints'][1])} | "
                         f"{fmt(row['return_min'])} | {fmt(row['return_barrier'])} | {fmt(row['return_barrier_linear'])} |")
    lines += ["", "## Figures", ""] + [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in pngs]
    lines += ["", "Raw grids and spectra (npz / JSON) are in `data/`; replot them with numpy + matplotlib.", ""]
    path = os.path.join(args.out, "RESULTS.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from rlgeom.agents import AGENTS

    torch.set_num_threads(1)
    start = time.perf_counter()
    algos = [a.strip() for a in args.algos.split(",") if a.strip()]
    skipped = [a for a in algos if a not in AGENTS]
    for a in skipped:
        print(f"skipping {a}: not in agents.AGENTS (available: {', '.join(AGENTS)})", file=sys.stderr)
    seeds = [int(s) for s in args.seeds.split(",")]
    out, data_dir = args.out, os.path.join(args.out, "data")
    os.makedirs(data_dir, exist_ok=True)
    runs, spectra, curves, lands = [], {}, {}, {}
    for algo, seed in itertools.product([a for a in algos if a in AGENTS], seeds):
        print(f"[{time.perf_counter() - start:7.0f} s] training {algo} seed {seed}", file=sys.stderr)
        run = train(algo, seed, args)
        runs.append(run)
        key = f"{algo}_s{seed}"
        print(f"[{time.perf_counter() - start:7.0f} s] spectrum over training and landscapes of {key}", file=sys.stderr)
        spectra[key] = spectrum_over_training(run, args)
        curves[key] = geometry_curves(run)
        lands[key] = landscapes(run, args, data_dir, out)
    if not runs:
        print("error: none of --algos is available", file=sys.stderr)
        return 2
    interps = interpolations(runs, args, data_dir, out)
    with open(os.path.join(data_dir, "summary.json"), "w") as f:
        json.dump({"runs": runs, "spectra": spectra, "geometry_curves": curves, "landscapes": lands,
                   "interpolations": interps}, f, indent=1, default=str)
    pngs = plot_spectra(spectra, curves, out)
    pngs += sorted(os.path.join(out, p) for p in os.listdir(out) if p.endswith(".png") and os.path.join(out, p) not in pngs)
    path = write_results(args, argv, runs, spectra, curves, lands, interps, skipped, pngs, time.perf_counter() - start)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
