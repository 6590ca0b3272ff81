"""Loss-landscape plots of a trained policy: `python -m rlgeom.landscape {random,fisher,pca,interpolate,sharpness}`.

Two objectives are plotted around a saved model θ*:

- the surrogate L(θ) = E[π_θ(a|s) / π_θ*(a|s) · Â] on one fixed batch of states collected by θ* in a
  fresh env (Â: GAE from the model's own critic, normalised to zero mean and unit std, so L(θ*) = 0
  up to rounding and the scale is comparable between models): cheap, on every grid point;
- the evaluated mean return of the deterministic policy over `--eval-episodes` episodes, every
  point with the same env seed (common random numbers): expensive, on a coarser grid, in parallel
  worker processes (each loads the model file once and evaluates its share of the points).

Directions (θ = θ* + a·d₁ [+ b·d₂]), all in the actor's parameters (the critic and the observation
normaliser stay at θ*'s values):

| kind        | directions                                                    | coordinates                    |
|-------------|---------------------------------------------------------------|--------------------------------|
| random      | filter-normalised Gaussian (Li et al., NeurIPS 2018): each    | a = 1 moves every filter by    |
|             | row / output channel scaled to its filter's norm; 1-D         | its own norm                   |
|             | parameters (biases, log σ) zeroed (rlgeom.geometry.spectrum)           |                                |
| fisher      | top-2 eigenvectors u_i of the policy Fisher on the batch,     | a² ≈ KL(π_θ* ‖ π_θ) along u₁   |
|             | scaled by √(2/λ_i)                                            | (quadratic model): √KL units   |
| pca         | top-2 principal directions of the run's trajectory θ_t − θ*   | Euclidean, unit directions;    |
|             | over its checkpoints (Li et al. section 7); the trajectory is | the grid spans the projected   |
|             | projected on the plot; explained variance in the title        | trajectory (+20 %)             |
| interpolate | θ(α) = (1 − α)·θ_A + α·θ_B over the whole floating-point      | α ∈ [0, 1]                     |
|             | state (actor, critic, normaliser statistics): each endpoint   |                                |
|             | is exactly its model. Surrogate batch collected by A          |                                |

Barrier height along an interpolation, for an objective f to maximise (the return; the surrogate
too), on the loss −f: its maximum along the path minus the mean of its endpoints (Entezari et al.
2022), i.e. mean(f(0), f(1)) − min_α f(α). This is ≥ |f(1) − f(0)| / 2 even without a dip, so the
barrier above the straight line between the endpoints, max_α [(1 − α)f(0) + αf(1) − f(α)] (Frankle
et al. 2020), is reported beside it (`*_barrier_linear`); both are 0 for a path that never dips.

Outputs in --out: <name>.png (matplotlib, Agg, object API), <name>.npz and <name>.json (the raw
grids, axes, trajectory and metadata, to replot); `sharpness` writes sharpness.json and sharpness.png
(the distribution of the changes over the random directions, and the Fisher's top eigenvalues). Bad input (models of different architectures or
spaces, checkpoints of different runs, a return grid estimated to exceed --time-budget) is reported
as "error: ..." with exit status 2.
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context

import numpy as np
import torch

from rlgeom.data.buffer import RolloutBuffer
from rlgeom.geometry.fisher import PolicyFisher
from rlgeom.persistence.serialization import ModelFileError, read_model
from rlgeom.geometry.spectrum import filter_normalized_direction, fisher_spectrum, policy_sharpness, surrogate_objective

KINDS = ("random", "fisher", "pca", "interpolate")
#: a return grid estimated to take less than this in one process is not worth starting worker processes
#: (each imports torch, gymnasium and the agents: seconds, more on a loaded machine)
POOL_MIN_SECONDS = 20.0
#: start-up allowance per pool in the time estimate
POOL_STARTUP_SECONDS = 5.0
DEFAULT_RADIUS = {"random": 0.5, "fisher": 0.5}


class LandscapeError(ValueError):
    """Input a landscape cannot be computed from: printed as `error: ...`, exit status 2."""


# ---------------------------------------------------------------------------------------------
# models and checkpoints
# ---------------------------------------------------------------------------------------------


def load_agent(path: str, env=None, device: str = "cpu"):
    """(agent, description) of a saved model; the agent class comes from the file's "algo"."""
    from rlgeom.agents import AGENTS

    _, description = read_model(path)
    algo = description.get("algo")
    if algo not in AGENTS:
        raise LandscapeError(f"{path}: algo {algo!r} is not an available agent; accepted: {', '.join(AGENTS)}")
    return AGENTS[algo].load(path, env=env, device=device), description


def check_same_architecture(reference: tuple[str, object], others: list[tuple[str, object]]) -> None:
    """Models compared in one landscape must have the same spaces, policy and parameter shapes."""
    ref_path, ref = reference
    ref_shapes = {k: tuple(v.shape) for k, v in ref.policy.state_dict().items()}
    for path, agent in others:
        problems = []
        for what in ("observation_space", "action_space"):
            if repr(getattr(agent, what)) != repr(getattr(ref, what)):
                problems.append(f"{what.replace('_', ' ')} {getattr(agent, what)} vs {getattr(ref, what)}")
        if agent.policy_name != ref.policy_name:
            problems.append(f"policy {agent.policy_name} vs {ref.policy_name}")
        if agent.policy.obs_normalizer.enabled != ref.policy.obs_normalizer.enabled:
            problems.append(f"normalize_observations {agent.policy.obs_normalizer.enabled} vs "
                            f"{ref.policy.obs_normalizer.enabled}")
        shapes = {k: tuple(v.shape) for k, v in agent.policy.state_dict().items()}
        if shapes != ref_shapes:
            diff = sorted(k for k in set(shapes) | set(ref_shapes) if shapes.get(k) != ref_shapes.get(k))
            problems.append(
                "parameters " + ", ".join(f"{k} {shapes.get(k)} vs {ref_shapes.get(k)}" for k in diff[:3])
                + (" ..." if len(diff) > 3 else "")
            )
        if problems:
            raise LandscapeError(
                f"{path} and {ref_path} have different architectures ({'; '.join(problems)}); a landscape "
                "compares models of one architecture: the same policy, net_arch, observation and action spaces"
            )


def checkpoint_files(paths: list[str]) -> list[str]:
    """Model files from a list of files and/or directories (their *.safetensors), oldest first by
    the step count in each description."""
    files = []
    for path in paths:
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(glob.escape(path), "*.safetensors")))
            if not found:
                raise LandscapeError(f"{path}: a directory without *.safetensors model files")
            files += found
        else:
            files.append(path)
    steps = []
    for f in files:
        _, d = read_model(f)
        steps.append(int(d.get("num_timesteps", 0)))
    return [f for _, f in sorted(zip(steps, files))]


def check_same_run(described: list[tuple[str, dict]]) -> None:
    """Checkpoints of one trajectory: the same env, algo and seed in every description."""
    ref_path, ref = described[0]
    for path, d in described[1:]:
        diff = [f"{k} {d.get(k)!r} vs {ref.get(k)!r}" for k in ("env_id", "algo", "seed") if d.get(k) != ref.get(k)]
        if diff:
            raise LandscapeError(
                f"{path} is not from the same run as {ref_path} ({', '.join(diff)}); a trajectory needs "
                "checkpoints of one run (same env, algo and seed)"
            )


# ---------------------------------------------------------------------------------------------
# the policy's state as one vector
# ---------------------------------------------------------------------------------------------


class StateVector:
    """The policy's floating-point state (weights and normaliser statistics) as one float64 vector.

    Tensors shared between actor and critic (a shared CNN) appear once, under the actor's name.
    `embed_actor` maps a flat actor vector (in `actor.parameters()` order) into this space, zeros
    elsewhere.
    """

    def __init__(self, policy):
        seen, self.keys, self.tensors = set(), [], []
        for key, tensor in policy.state_dict(keep_vars=True).items():
            if not tensor.is_floating_point() or id(tensor) in seen:
                continue
            seen.add(id(tensor))
            self.keys.append(key)
            self.tensors.append(tensor)
        sizes = [t.numel() for t in self.tensors]
        self.offsets = dict(zip(self.keys, np.cumsum([0] + sizes[:-1]).tolist()))
        self.size = int(sum(sizes))
        self.actor_slices = []
        for name, p in policy.actor.named_parameters():
            if p.requires_grad:
                start = self.offsets[f"actor.{name}"]
                self.actor_slices.append(slice(start, start + p.numel()))

    def get(self) -> np.ndarray:
        return np.concatenate([t.detach().reshape(-1).to("cpu", torch.float64).numpy() for t in self.tensors])

    @torch.no_grad()
    def set(self, vector: np.ndarray) -> None:
        flat = torch.from_numpy(np.asarray(vector, dtype=np.float64))
        start = 0
        for t in self.tensors:
            t.copy_(flat[start : start + t.numel()].view(t.shape).to(t.device, t.dtype))
            start += t.numel()

    def embed_actor(self, actor_flat: torch.Tensor | np.ndarray) -> np.ndarray:
        flat = np.asarray(actor_flat.detach().cpu() if torch.is_tensor(actor_flat) else actor_flat, dtype=np.float64)
        out, start = np.zeros(self.size), 0
        for sl in self.actor_slices:
            n = sl.stop - sl.start
            out[sl] = flat[start : start + n]
            start += n
        return out

    def actor_part(self, vector: np.ndarray) -> np.ndarray:
        return np.concatenate([vector[sl] for sl in self.actor_slices])


# ---------------------------------------------------------------------------------------------
# the fixed batch and the objectives
# ---------------------------------------------------------------------------------------------


@dataclass
class FixedBatch:
    """States collected by the reference policy: what the surrogate is evaluated on."""

    obs: torch.Tensor
    actions: torch.Tensor
    old_log_probs: torch.Tensor
    advantages: torch.Tensor

    def surrogate(self, policy) -> float:
        with torch.no_grad():
            return float(surrogate_objective(policy, self.obs, self.actions, self.old_log_probs, self.advantages))


def collect_batch(agent, env_id: str, n_states: int, seed: int) -> FixedBatch:
    """About `n_states` transitions of `agent`'s stochastic policy on a fresh `env_id` env (its
    n_envs), with GAE from the agent's critic and γ, λ; advantages normalised. Global RNGs untouched."""
    from rlgeom.envs import make_vec_env

    env = make_vec_env(env_id, agent.n_envs, seed, agent.device)
    try:
        n_steps = max(1, math.ceil(n_states / env.num_envs))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            obs = env.reset(seed=seed)
            starts = torch.ones(env.num_envs, dtype=torch.bool, device=agent.device)
            buffer = RolloutBuffer(
                n_steps, env.num_envs, tuple(agent.observation_space.shape), obs.dtype,
                agent.policy.family.action_shape, agent.policy.family.action_dtype, agent.device,
            )
            for _ in range(n_steps):
                with torch.no_grad():  # π's own draw (gSDE included: no exploration matrices carried over)
                    actions = agent.policy.family.sample(agent.policy.dist_params(obs))
                step = env.step(agent._env_actions(actions))
                buffer.add(obs, actions, starts, step)
                obs, starts = step.obs, step.done
            buffer.evaluate_policy_terms(agent.policy.rollout_terms)
    finally:
        env.close()
    if agent.reward_scaler is not None:  # the critic was trained on scaled rewards
        buffer.rewards.copy_(agent.reward_scaler.scale_rollout(buffer.rewards, buffer.dones))
    buffer.compute_advantages(agent.policy.value, agent.config.gamma, agent.config.gae_lambda)
    b = buffer.full_batch(normalize_advantage=True)
    return FixedBatch(b.obs, b.actions, b.old_log_probs, b.advantages)


# ---------------------------------------------------------------------------------------------
# directions
# ---------------------------------------------------------------------------------------------


@dataclass
class Plane:
    """θ(c) = origin + c @ directions, c ∈ R^k (k = 1 or 2), over a StateVector's space."""

    kind: str
    origin: np.ndarray
    directions: np.ndarray
    labels: list[str]
    trajectory: np.ndarray | None = None  # [T, k] coordinates of the run's checkpoints
    info: dict = field(default_factory=dict)

    def point(self, coords) -> np.ndarray:
        return self.origin + np.asarray(coords, dtype=np.float64) @ self.directions


def actor_params(agent) -> list[torch.nn.Parameter]:
    return [p for p in agent.policy.actor.parameters() if p.requires_grad]


def random_plane(agent, dims: int, seed: int, one_d: str = "zero") -> Plane:
    space = StateVector(agent.policy)
    gen = torch.Generator().manual_seed(seed)
    dirs = np.stack([space.embed_actor(filter_normalized_direction(actor_params(agent), gen, one_d)) for _ in range(dims)])
    labels = [f"filter-normalised random direction {i + 1}" for i in range(dims)]
    return Plane("random", space.get(), dirs, labels, info={"one_d": one_d, "direction_seed": seed})


def fisher_plane(agent, batch: FixedBatch, dims: int) -> Plane:
    space = StateVector(agent.policy)
    fisher = PolicyFisher(agent.policy.actor, agent.policy.family, agent.policy.actor_inputs(batch.obs).detach(),
                          damping=0.0)
    spec = fisher_spectrum(fisher, k=min(max(dims, 2), fisher.num_parameters), n_probes=10)
    values = spec.eigenvalues[:dims].double().cpu()
    if not bool((values > 0).all()):
        raise LandscapeError(f"the policy Fisher's top eigenvalues {values.tolist()} are not positive on this batch")
    dirs = np.stack([
        space.embed_actor(spec.eigenvectors[:, i].double().cpu() * math.sqrt(2.0 / float(values[i]))) for i in range(dims)
    ])
    labels = [f"Fisher eigenvector {i + 1} (λ={float(values[i]):.3g}), √KL units" for i in range(dims)]
    info = {"fisher_eigenvalues": spec.eigenvalues.tolist(), "fisher_trace": spec.trace}
    return Plane("fisher", space.get(), dirs, labels, info=info)


def pca_plane(agent, checkpoints: list, dims: int) -> Plane:
    """Top principal directions of θ_t − θ* over the checkpoints' actors (Li et al. 2018, section 7)."""
    space = StateVector(agent.policy)
    final = space.actor_part(space.get())
    rows = []
    for other in checkpoints:
        other_space = StateVector(other.policy)
        rows.append(other_space.actor_part(other_space.get()) - final)
    m = np.stack(rows)
    if np.linalg.matrix_rank(m) < dims:
        raise LandscapeError(
            f"the checkpoints span {np.linalg.matrix_rank(m)} direction(s) away from the model; a {dims}-D PCA "
            f"plot needs at least {dims} checkpoints that differ from it"
        )
    _, s, vt = np.linalg.svd(m, full_matrices=False)
    explained = (s**2 / np.sum(s**2))[:dims]
    components = vt[:dims]
    trajectory = m @ components.T  # orthonormal components: projections are dot products
    dirs = np.stack([space.embed_actor(c) for c in components])
    labels = [f"PC{i + 1} ({100 * explained[i]:.1f} % of the trajectory's variance)" for i in range(dims)]
    return Plane("pca", space.get(), dirs, labels, trajectory=trajectory,
                 info={"explained_variance_ratio": explained.tolist()})


def interpolation_line(agent_a, agent_b) -> Plane:
    a, b = StateVector(agent_a.policy).get(), StateVector(agent_b.policy).get()
    return Plane("interpolate", a, (b - a)[None], ["α: (1 − α)·θ_A + α·θ_B"])


# ---------------------------------------------------------------------------------------------
# grids
# ---------------------------------------------------------------------------------------------


def grid_coords(axes: list[np.ndarray]) -> list[tuple[tuple[int, ...], tuple[float, ...]]]:
    """[(index, coordinates)] over the product of the axes (C order: index [i, j] = (x_i, y_j))."""
    return [(idx, tuple(float(axes[d][i]) for d, i in enumerate(idx))) for idx in np.ndindex(*[len(a) for a in axes])]


def surrogate_grid(agent, plane: Plane, axes: list[np.ndarray], batch: FixedBatch, progress: bool = True) -> np.ndarray:
    space = StateVector(agent.policy)
    saved = space.get()
    out = np.full([len(a) for a in axes], np.nan)
    try:
        for idx, coords in _bar(grid_coords(axes), progress, "surrogate"):
            space.set(plane.point(coords))
            out[idx] = batch.surrogate(agent.policy)
    finally:
        space.set(saved)
    return out


_WORKER: dict = {}


def _init_worker(model_path: str, env_id: str, origin, directions, n_episodes: int, seed: int) -> None:
    """Per worker process: load the model file once and make its evaluation env."""
    from rlgeom.envs import make_vec_env

    torch.set_num_threads(1)
    agent, _ = load_agent(model_path, device="cpu")
    _WORKER.update(agent=agent, space=StateVector(agent.policy), env=make_vec_env(env_id, 1, device="cpu"),
                   origin=origin, directions=directions, n_episodes=n_episodes, seed=seed)


def _evaluate_point(index, coords) -> tuple:
    from rlgeom.training.evaluation import evaluate

    w = _WORKER
    w["space"].set(w["origin"] + np.asarray(coords) @ w["directions"])
    mean, _ = evaluate(w["agent"], w["env"], w["n_episodes"], deterministic=True, seed=w["seed"])
    return index, mean


def time_one_evaluation(model_path: str, env_id: str, plane: Plane, n_episodes: int, seed: int) -> tuple[float, float]:
    """(return at the plane's origin, seconds it took), evaluated in this process."""
    _init_worker(model_path, env_id, plane.origin, plane.directions, n_episodes, seed)
    try:
        start = time.perf_counter()
        _, value = _evaluate_point((), np.zeros(plane.directions.shape[0]))
        return value, time.perf_counter() - start
    finally:
        _WORKER["env"].close()
        _WORKER.clear()


def return_grid(
    model_path: str, env_id: str, plane: Plane, axes: list[np.ndarray], n_episodes: int, seed: int,
    workers: int = 1, progress: bool = True,
) -> np.ndarray:
    """Mean evaluated return on every grid point, in `workers` processes (1: in this process)."""
    out = np.full([len(a) for a in axes], np.nan)
    points = grid_coords(axes)
    args = (model_path, env_id, plane.origin, plane.directions, n_episodes, seed)
    if workers <= 1:
        _init_worker(*args)
        try:
            for idx, coords in _bar(points, progress, "return"):
                out[idx] = _evaluate_point(idx, coords)[1]
        finally:
            _WORKER["env"].close()
            _WORKER.clear()
        return out
    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_init_worker, initargs=args) as pool:
        futures = [pool.submit(_evaluate_point, idx, coords) for idx, coords in points]
        for future in _bar(as_completed(futures), progress, "return", total=len(futures)):
            idx, value = future.result()
            out[idx] = value
    return out


def _bar(iterable, progress: bool, desc: str, total: int | None = None):
    if not progress:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="pt", dynamic_ncols=True, file=sys.stderr, leave=False)


# ---------------------------------------------------------------------------------------------
# the landscape record, its files and its plot
# ---------------------------------------------------------------------------------------------


@dataclass
class Landscape:
    """Grids of one landscape. surrogate[i, j] is at (axes[0][i], axes[1][j]); likewise returns."""

    kind: str
    labels: list[str]
    axes: list[np.ndarray]
    surrogate: np.ndarray
    return_axes: list[np.ndarray] | None = None
    returns: np.ndarray | None = None
    trajectory: np.ndarray | None = None
    meta: dict = field(default_factory=dict)

    @property
    def dims(self) -> int:
        return len(self.axes)

    def save(self, out_dir: str, name: str | None = None) -> dict[str, str]:
        """Write <name>.npz, <name>.json and <name>.png; returns their paths."""
        os.makedirs(out_dir, exist_ok=True)
        name = name or f"{self.kind}_{self.dims}d"
        base = os.path.join(out_dir, name)
        arrays = {f"axis{i}": a for i, a in enumerate(self.axes)}
        arrays["surrogate"] = self.surrogate
        if self.returns is not None:
            arrays.update({f"return_axis{i}": a for i, a in enumerate(self.return_axes)})
            arrays["returns"] = self.returns
        if self.trajectory is not None:
            arrays["trajectory"] = self.trajectory
        np.savez(base + ".npz", **arrays)
        record = {"kind": self.kind, "labels": self.labels, "meta": self.meta,
                  **{k: np.asarray(v).tolist() for k, v in arrays.items()}}
        with open(base + ".json", "w") as f:
            json.dump(record, f, indent=1, default=_json_default)
        self.plot(base + ".png")
        return {"png": base + ".png", "npz": base + ".npz", "json": base + ".json"}

    def plot(self, path: str) -> None:
        self.figure().savefig(path, dpi=110)

    def figure(self):
        """The matplotlib Figure of this landscape (object API, Agg canvas)."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        if self.dims == 1:
            fig = Figure(figsize=(6.4, 4.2), layout="constrained")
            FigureCanvasAgg(fig)
            ax = fig.add_subplot()
            ax.plot(self.axes[0], self.surrogate, color="tab:blue", label="surrogate (fixed batch)")
            ax.set_xlabel(self.labels[0])
            ax.set_ylabel(SURROGATE_LABEL, color="tab:blue")
            if self.trajectory is not None:
                ax.plot(self.trajectory[:, 0], np.full(len(self.trajectory), np.nanmin(self.surrogate)), "|",
                        color="0.3", markersize=12, label="checkpoints")
            if self.returns is not None:
                ax2 = ax.twinx()
                ax2.plot(self.return_axes[0], self.returns, "o-", color="tab:red", label="mean return")
                ax2.set_ylabel(self._return_label(), color="tab:red")
            if "surrogate_barrier" in self.meta:
                text = (f"surrogate barrier {self.meta['surrogate_barrier']:.3g} (above the chord "
                        f"{self.meta['surrogate_barrier_linear']:.3g})")
                if "return_barrier" in self.meta:
                    text = (f"return barrier {self.meta['return_barrier']:.3g} (above the chord "
                            f"{self.meta['return_barrier_linear']:.3g}); " + text)
                ax.set_title(text, fontsize=9)
                fig.supxlabel(BARRIER_DEFINITION, fontsize=7)
            if self.kind == "interpolate":
                ax.axvline(0.0, color="0.6", lw=0.8, label="α = 0: the first model")
                ax.axvline(1.0, color="0.6", lw=0.8, linestyle="--", label="α = 1: the second model")
            else:
                ax.axvline(0.0, color="0.6", lw=0.8, label="0: the saved model θ*")
            ax.legend(fontsize=7, loc="best")
        else:
            panels = [(SURROGATE_LABEL, "surrogate L(θ)", self.axes, self.surrogate)]
            if self.returns is not None:
                panels.append((self._return_label(), "mean return", self.return_axes, self.returns))
            fig = Figure(figsize=(5.6 * len(panels), 4.6), layout="constrained")
            FigureCanvasAgg(fig)
            for k, (title, quantity, axes, grid) in enumerate(panels):
                ax = fig.add_subplot(1, len(panels), k + 1)
                x, y = np.meshgrid(axes[0], axes[1], indexing="ij")
                flat = bool(np.ptp(grid) == 0)  # a constant quantity: one colour, its value on the bar
                value = float(grid.flat[0])
                levels = np.linspace(value - max(abs(value), 1.0) * 1e-3, value + max(abs(value), 1.0) * 1e-3,
                                     3) if flat else 20
                filled = ax.contourf(x, y, grid, levels=levels, cmap="viridis")
                if not flat:
                    ax.contour(x, y, grid, levels=10, colors="k", linewidths=0.4)
                bar = fig.colorbar(filled, ax=ax, ticks=[value] if flat else None)
                bar.set_label(f"{quantity} (constant: {value:.6g})" if flat else quantity)  # the title says it in full
                bar.formatter.set_useOffset(False)  # no "1e−11+5e2" offset label above the bar
                bar.update_ticks()
                if self.trajectory is not None:
                    path = np.vstack([self.trajectory, np.zeros((1, 2))])  # the checkpoints, then the model
                    ax.plot(path[:, 0], path[:, 1], "w.-", lw=1, label="training trajectory (checkpoints)")
                    ax.plot(*self.trajectory[0], "wo", markeredgecolor="k", markersize=8, label="start (first checkpoint)")
                ax.plot(0, 0, "r*", markersize=12, markeredgecolor="k", label="θ*: the saved model")
                ax.set_xlabel(self.labels[0], fontsize=8)
                ax.set_ylabel(self.labels[1], fontsize=8)
                ax.set_title(title, fontsize=9)
                ax.legend(fontsize=7, loc="upper right", framealpha=0.8)
        fig.suptitle(self.meta.get("title", self.kind), fontsize=9)
        return fig


    def _return_label(self) -> str:
        n = self.meta.get("eval_episodes")
        return f"mean return of the deterministic policy over {n} episode(s)" if n else "mean return"


#: the surrogate's axis and colorbar label
SURROGATE_LABEL = "surrogate L(θ) = E[π_θ/π_θ* · Â] (fixed batch, normalised Â)"


def plot_sharpness(result: dict, path: str) -> str:
    """sharpness.png: the distribution of the changes f(θ* + ε·d) − f(θ*) over the random directions d, for the
    surrogate and the mean KL (box: quartiles, whiskers: 5 % and 95 %, dots: min and max, ◆: mean; drawn from
    the quantiles policy_sharpness reports), and the Fisher's top eigenvalues."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.8), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, key, label in ((axes[0], "surrogate", "change of the surrogate L"),
                           (axes[1], "mean_kl", "mean KL(π_θ* ‖ π_θ*+εd)")):
        q = result[key]
        ax.bxp([{"whislo": q["q05"], "q1": q["q25"], "med": q["q50"], "q3": q["q75"], "whishi": q["q95"],
                 "fliers": [q["min"], q["max"]], "mean": q["mean"], "label": f"ε = {q['epsilon']:g}"}],
               showmeans=True, meanprops={"marker": "D"})
        ax.set_ylabel(label)
        ax.set_title(f"{key}: over {result.get('n_directions', '?')} random directions", fontsize=9)
        ax.axhline(0.0, color="0.6", lw=0.8)
    eig = np.asarray(result["fisher_top_eigenvalues"])
    axes[2].bar(np.arange(1, len(eig) + 1), eig, color="tab:purple")
    axes[2].set(yscale="log", xlabel="rank i", ylabel="Fisher eigenvalue λ_i")
    axes[2].set_title(f"top Fisher eigenvalues (trace {result['fisher_trace']:.3g})", fontsize=9)
    fig.supxlabel("box: quartiles; whiskers: 5 % and 95 %; circles: min and max; ◆: mean; ε: each filter moves "
                  "by ε times its own norm", fontsize=8)
    fig.suptitle(f"sharpness of {result.get('title', result['model'])}", fontsize=9)
    fig.savefig(path, dpi=110)
    return path


def _json_default(obj):
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return str(obj)


#: what the barrier numbers mean, printed and plotted beside them
BARRIER_DEFINITION = ("barrier = mean of the two endpoints' values − the lowest value along the path; "
                      "above the chord = the largest dip below the straight line between the endpoints")


def run_label(path: str, description: dict) -> str:
    """A name for the run a model file belongs to: 'PPO on CartPole-v1, seed 0, 100000 steps
    (runs/CartPole-v1/ppo/seed0)'; the folder stands in for a generic file name such as model.safetensors."""
    stem = os.path.splitext(os.path.basename(path))[0]
    folder = os.path.dirname(os.path.abspath(path))
    if stem == "model" or stem.startswith("checkpoint"):
        parts = folder.split(os.sep)
        stem = "/".join(parts[-3:] if len(parts) >= 3 else parts) + ("" if stem == "model" else f" {stem}")
    algo = str(description.get("algo") or "?").upper()
    seed = description.get("seed")
    steps = description.get("num_timesteps")
    facts = ", ".join(x for x in (f"seed {seed}" if seed is not None else "", f"{steps} steps" if steps else "") if x)
    return f"{algo} on {description.get('env_id') or '?'}" + (f", {facts}" if facts else "") + f" ({stem})"


def barrier_height(values: np.ndarray) -> float:
    """mean(f(0), f(1)) − min_α f(α) for an objective f to maximise: the loss −f's maximum along the
    path minus the mean of its endpoints. `values` are f on an α grid from 0 to 1."""
    return float(0.5 * (values[0] + values[-1]) - np.nanmin(values))


def linear_barrier_height(alphas: np.ndarray, values: np.ndarray) -> float:
    """max_α [(1 − α)f(0) + αf(1) − f(α)] ≥ 0: the dip below the straight line between the endpoints."""
    line = (1 - alphas) * values[0] + alphas * values[-1]
    return float(max(0.0, np.nanmax(line - values)))


# ---------------------------------------------------------------------------------------------
# one call from model files to a Landscape
# ---------------------------------------------------------------------------------------------


def compute_landscape(
    kind: str,
    model: str,
    *,
    other: str | None = None,
    checkpoints: list[str] | None = None,
    dims: int = 2,
    points: int = 21,
    return_points: int = 7,
    radius: float | None = None,
    env: str | None = None,
    batch_states: int = 2048,
    eval_episodes: int = 3,
    workers: int = 1,
    time_budget: float | None = None,
    seed: int = 0,
    returns: bool = True,
    progress: bool = True,
) -> Landscape:
    """The landscape of `model` (a saved model file) of one kind; see the module docstring.

    `other` is the second model of "interpolate"; `checkpoints` the run's model files or
    directories for "pca". Grids have `points` (surrogate) and `return_points` (return) per axis;
    they must be odd for the centred kinds so that the model itself is a grid point. The return
    grid runs in `workers` processes when it is estimated to take at least POOL_MIN_SECONDS in one.
    """
    if kind not in KINDS:
        raise LandscapeError(f"unknown landscape kind {kind!r}; accepted: {', '.join(KINDS)}")
    dims = 1 if kind == "interpolate" else dims
    if dims not in (1, 2):
        raise LandscapeError(f"dims must be 1 or 2, got {dims}")
    for name, n in (("points", points), ("return_points", return_points)):
        if n < 2 or (kind != "interpolate" and n % 2 == 0):
            raise LandscapeError(
                f"{name} must be {'≥ 2' if kind == 'interpolate' else 'odd and ≥ 3 (the model is the grid centre)'}, got {n}"
            )
    agent, description = load_agent(model)
    env_id = env or description.get("env_id")
    if not env_id:
        raise LandscapeError(f"{model}: the model does not name its env; pass --env")
    meta = {"model": model, "algo": description.get("algo"), "env": env_id, "model_seed": description.get("seed"),
            "num_timesteps": description.get("num_timesteps"), "seed": seed, "batch_states": batch_states,
            "eval_episodes": eval_episodes}
    if kind == "interpolate":
        if other is None:
            raise LandscapeError("interpolate needs two models")
        agent_b, description_b = load_agent(other)
        check_same_architecture((model, agent), [(other, agent_b)])
        meta.update(other=other, other_algo=description_b.get("algo"), other_seed=description_b.get("seed"))
    checkpoint_agents = []
    if kind == "pca":
        files = checkpoint_files(checkpoints or [])
        files = [f for f in files if os.path.abspath(f) != os.path.abspath(model)]
        if len(files) < dims:
            raise LandscapeError(f"pca needs at least {dims} checkpoints besides the model, got {len(files)}")
        loaded = [(f, *load_agent(f)) for f in files]
        check_same_run([(model, description)] + [(f, d) for f, _, d in loaded])
        check_same_architecture((model, agent), [(f, a) for f, a, _ in loaded])
        checkpoint_agents = [a for _, a, _ in loaded]
        meta["checkpoints"] = files

    batch = collect_batch(agent, env_id, batch_states, seed)
    if kind == "random":
        plane = random_plane(agent, dims, seed)
    elif kind == "fisher":
        plane = fisher_plane(agent, batch, dims)
    elif kind == "pca":
        plane = pca_plane(agent, checkpoint_agents, dims)
    else:
        plane = interpolation_line(agent, agent_b)
    meta.update(plane.info)

    def axes_for(n: int) -> list[np.ndarray]:
        if kind == "interpolate":
            return [np.linspace(0.0, 1.0, n)]
        if kind == "pca" and radius is None:
            extent = 1.2 * np.abs(plane.trajectory).max(axis=0)
            return [np.linspace(-e, e, n) for e in np.where(extent > 0, extent, 1.0)]
        r = radius if radius is not None else DEFAULT_RADIUS[kind]
        return [np.linspace(-r, r, n) for _ in range(dims)]

    axes, return_axes = axes_for(points), axes_for(return_points)
    timings = {}
    start = time.perf_counter()
    centre = batch.surrogate(agent.policy)
    timings["surrogate_s_per_point"] = time.perf_counter() - start
    estimate = timings["surrogate_s_per_point"] * points**dims
    if returns:
        meta["return_at_model"], t_eval = time_one_evaluation(model, env_id, plane, eval_episodes, seed)
        timings["return_s_per_point"] = t_eval
        n_return = return_points**dims
        if workers > 1 and t_eval * n_return < POOL_MIN_SECONDS:
            workers = 1  # cheaper in this process than starting the pool
        estimate += t_eval * math.ceil(n_return / workers) + (POOL_STARTUP_SECONDS if workers > 1 else 0.0)
        timings["workers"] = workers
    timings["estimate_s"] = estimate
    if time_budget is not None and estimate > time_budget:
        detail = f"{points ** dims} surrogate points × {timings['surrogate_s_per_point']:.3g} s"
        if returns:
            detail += (f" + {return_points ** dims} return points × {timings['return_s_per_point']:.3g} s per "
                       f"evaluation of {eval_episodes} episode(s) / {max(1, workers)} worker(s)"
                       + (f" + {POOL_STARTUP_SECONDS:g} s start-up" if workers > 1 else ""))
        raise LandscapeError(
            f"the {kind} grid would take about {estimate:.0f} s ({detail}), more than --time-budget "
            f"{time_budget:g} s; use fewer --points / --return-points or --eval-episodes, more --workers, "
            "--no-return, or a larger --time-budget"
        )
    surrogate = surrogate_grid(agent, plane, axes, batch, progress)
    result = Landscape(kind, plane.labels, axes, surrogate, trajectory=plane.trajectory, meta=meta)
    if returns:
        result.return_axes = return_axes
        result.returns = return_grid(model, env_id, plane, return_axes, eval_episodes, seed, workers, progress)
    meta["surrogate_at_model"] = centre
    meta["timings"] = {**timings, "total_s": time.perf_counter() - start}
    if kind == "interpolate":
        meta["surrogate_barrier"] = barrier_height(surrogate)
        meta["surrogate_barrier_linear"] = linear_barrier_height(axes[0], surrogate)
        if returns:
            meta["return_barrier"] = barrier_height(result.returns)
            meta["return_barrier_linear"] = linear_barrier_height(return_axes[0], result.returns)
    meta["title"] = f"{kind} landscape of {run_label(model, description)}"
    if kind == "interpolate":
        meta["title"] = f"interpolation from {run_label(model, description)}\nto {run_label(other, description_b)}"
    return result


def compute_sharpness(model: str, *, env: str | None = None, batch_states: int = 2048, epsilon: float = 0.05,
                      n_directions: int = 50, k: int = 5, seed: int = 0) -> dict:
    """rlgeom.geometry.spectrum.policy_sharpness of a saved model on a fixed batch it collects."""
    agent, description = load_agent(model)
    env_id = env or description.get("env_id")
    if not env_id:
        raise LandscapeError(f"{model}: the model does not name its env; pass --env")
    batch = collect_batch(agent, env_id, batch_states, seed)
    result = policy_sharpness(agent.policy, batch.obs, batch.actions, batch.old_log_probs, batch.advantages,
                              epsilon=epsilon, n_directions=n_directions, k=k,
                              generator=torch.Generator().manual_seed(seed))
    return {"model": model, "algo": description.get("algo"), "env": env_id, "batch_states": len(batch.obs),
            "seed": seed, "n_directions": n_directions, "title": run_label(model, description), **result}


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rlgeom.landscape", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="kind", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--env", default=None, help="env id (default: the model's)")
    common.add_argument("--out", default="landscape", help="output directory (default: ./landscape)")
    common.add_argument("--name", default=None, help="file stem (default: <kind>_<dims>d)")
    common.add_argument("--batch-states", type=int, default=2048, help="states in the surrogate's fixed batch")
    common.add_argument("--seed", type=int, default=0, help="batch collection, directions and evaluation seed")
    grid = argparse.ArgumentParser(add_help=False)
    grid.add_argument("--points", type=int, default=21, help="surrogate grid points per axis (default 21)")
    grid.add_argument("--return-points", type=int, default=7, help="return grid points per axis (default 7)")
    grid.add_argument("--eval-episodes", type=int, default=3, help="episodes per return evaluation (default 3)")
    grid.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="processes for the return grid")
    grid.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                      help="refuse a grid estimated (from timing one evaluation) to take longer")
    grid.add_argument("--no-return", action="store_true", help="surrogate only (no episodes)")
    grid.add_argument("--no-progress", action="store_true", help="no progress bars")
    for kind, text in (("random", "filter-normalised random directions"), ("fisher", "top Fisher eigenvectors"),
                       ("pca", "PCA of the run's checkpoints, with the trajectory")):
        s = sub.add_parser(kind, parents=[common, grid], help=text)
        s.add_argument("model", help="saved model (.safetensors)")
        s.add_argument("--dims", type=int, default=2, choices=(1, 2))
        if kind == "pca":
            s.add_argument("--checkpoints", nargs="+", required=True, metavar="PATH",
                           help="the run's model files and/or directories of *.safetensors")
        s.add_argument("--radius", type=float, default=None,
                       help="grid half-width (default: 0.5 random, 0.5 fisher, the trajectory's extent for pca)")
    s = sub.add_parser("interpolate", parents=[common, grid], help="linear interpolation between two models")
    s.add_argument("model", help="model A (.safetensors); the surrogate batch is collected by A")
    s.add_argument("other", help="model B, of the same architecture")
    s = sub.add_parser("sharpness", parents=[common], help="top Fisher eigenvalues and random-direction sharpness")
    s.add_argument("model", help="saved model (.safetensors)")
    s.add_argument("--epsilon", type=float, default=0.05, help="relative radius of the filter-normalised steps")
    s.add_argument("--directions", type=int, default=50, help="random directions")
    s.add_argument("-k", type=int, default=5, help="Fisher eigenvalues")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.kind == "sharpness":
            result = compute_sharpness(args.model, env=args.env, batch_states=args.batch_states,
                                       epsilon=args.epsilon, n_directions=args.directions, k=args.k, seed=args.seed)
            os.makedirs(args.out, exist_ok=True)
            path = os.path.join(args.out, (args.name or "sharpness") + ".json")
            with open(path, "w") as f:
                json.dump(result, f, indent=1, default=_json_default)
            png = plot_sharpness(result, os.path.splitext(path)[0] + ".png")
            print(json.dumps({k: result[k] for k in ("fisher_top_eigenvalues", "surrogate", "mean_kl")}, default=_json_default))
            print(f"wrote {path}, {png}")
            return 0
        if args.workers < 1:
            raise LandscapeError(f"--workers must be ≥ 1, got {args.workers}")
        landscape = compute_landscape(
            args.kind, args.model, other=getattr(args, "other", None), checkpoints=getattr(args, "checkpoints", None),
            dims=getattr(args, "dims", 1), points=args.points, return_points=args.return_points,
            radius=getattr(args, "radius", None), env=args.env, batch_states=args.batch_states,
            eval_episodes=args.eval_episodes, workers=args.workers, time_budget=args.time_budget, seed=args.seed,
            returns=not args.no_return, progress=not args.no_progress,
        )
        paths = landscape.save(args.out, args.name)
    except (LandscapeError, ModelFileError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if "surrogate_barrier" in landscape.meta:
        m = landscape.meta
        if "return_barrier" in m:
            print(f"return barrier {m['return_barrier']:.4g} (above the chord: {m['return_barrier_linear']:.4g})")
        print(f"surrogate barrier {m['surrogate_barrier']:.4g} (above the chord: {m['surrogate_barrier_linear']:.4g})")
        print(f"  ({BARRIER_DEFINITION}; 0 for a path that never dips)")
    print(f"wrote {paths['png']}, {paths['npz']}, {paths['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
