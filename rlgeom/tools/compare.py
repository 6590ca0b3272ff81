"""Turn a TensorBoard log directory into comparison plots and markdown tables.

    python -m rlgeom.compare LOGDIR [--out DIR] [--threshold TASK=VALUE ...] [--return-range TASK=LO:HI ...]
                                    [--tag rollout/ep_rew_mean] [--ci bootstrap|t] [--reps N]

Per task: ``<task>_return_vs_steps`` and ``<task>_return_vs_time`` (PNG and PDF) and ``<task>.md``; across
tasks (rlgeom.tools.aggregate, with rliable): ``aggregate_metrics``, ``performance_profile`` and
``probability_of_improvement`` (PNG and PDF); a combined ``report.md``. Runs are discovered and read by
:mod:`rlgeom.persistence.runlogs`. Intervals are percentile bootstrap intervals over seeds by default
(Student-t with `--ci t`); bands and intervals are kept inside the task's possible returns.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats

from rlgeom.persistence.runlogs import CompareError, Curve, Run, load_runs, merge_curves

__all__ = ["CompareError", "Run", "Row", "load_runs", "summarize", "write_report", "main"]

RETURN_TAG = "rollout/ep_rew_mean"
FPS_TAG = "time/fps"
FINAL_FRACTION = 0.1
MIN_SEEDS_FOR_INTERVAL = 3  # below this an interval is shown with a warning
CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000
MAX_PLOT_POINTS = 500
CI_METHODS = ("bootstrap", "t")
#: bootstrap resamples for the tables and rliable's aggregates (rliable's default is 50000 for the aggregates
#: and 2000 for profiles; its probability of improvement runs a Mann-Whitney test per resample, so 1000 keeps a
#: small report within about ten seconds)
REPS = 1000
#: the fewest resamples for a 95% interval, and the most --reps takes (rliable's default for its aggregates)
MIN_REPS, MAX_REPS = 100, 50_000
FIGURE_FORMATS = ("png", "pdf")


@dataclass
class Row:
    """One agent's line of a task table; numbers are None where undefined."""

    agent: str
    seeds: int
    final_mean: float
    final_ci: float | None
    #: 95% intervals (low, high) of the mean and the IQM of the final return over seeds; None for one seed
    final_interval: tuple[float, float] | None
    iqm: float
    iqm_interval: tuple[float, float] | None
    auc: float | None
    auc_range: tuple[float, float]
    threshold: float | None
    first_reach: list[float | None]
    fps: float | None
    budget: int
    #: mean over seeds of the training's wall-clock span (first event to the last `time/fps`); None without it
    wall_s: float | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def reached(self) -> int:
        """How many seeds reached the threshold."""
        return sum(s is not None for s in self.first_reach)

    @property
    def steps_to_threshold(self) -> float | None:
        """Median over seeds of the first step reaching the threshold (a seed that never does: inf)."""
        if self.threshold is None:
            return None
        return float(np.median([np.inf if s is None else s for s in self.first_reach]))


# ---------------------------------------------------------------- statistics


def mean_ci(samples: np.ndarray, ci: str = "bootstrap", seed: int = 0):
    """Mean over seeds (axis 0) and the lower/upper 95% bounds; bounds are NaN for one seed. The bootstrap
    (vectorised here: one interval per point of a curve) never leaves the range of the seeds' values."""
    samples = np.asarray(samples, dtype=float)
    n = samples.shape[0]
    mean = samples.mean(axis=0)
    if n < 2:
        nan = np.full_like(mean, np.nan)
        return mean, nan, nan
    if ci == "bootstrap":
        rng = np.random.default_rng(seed)
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=BOOTSTRAP_SAMPLES)
        means = counts @ samples.reshape(n, -1) / n
        alpha = 100 * (1 - CONFIDENCE) / 2
        lo, hi = np.percentile(means, [alpha, 100 - alpha], axis=0)
        return mean, lo.reshape(mean.shape), hi.reshape(mean.shape)
    half = stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * samples.std(axis=0, ddof=1) / np.sqrt(n)
    return mean, mean - half, mean + half


def final_return(curve: Curve) -> float:
    """Mean return over the last 10% of a run's steps (steps >= 0.9 x its last step)."""
    keep = curve.steps >= (1 - FINAL_FRACTION) * curve.steps[-1]
    return float(curve.values[keep].mean())


def common_range(xs: list[np.ndarray]) -> tuple[float, float]:
    """The x range every curve covers: latest first point to earliest last point."""
    return float(max(x[0] for x in xs)), float(min(x[-1] for x in xs))


def common_grid(xs: list[np.ndarray], lo: float, hi: float, max_points: int | None = None) -> np.ndarray:
    """Union of the curves' x points inside [lo, hi] plus both ends; evenly spaced when capped."""
    grid = np.unique(np.concatenate([x[(x >= lo) & (x <= hi)] for x in xs] + [np.array([lo, hi])]))
    if max_points is not None and len(grid) > max_points:
        grid = np.linspace(lo, hi, max_points)
    return grid


def resample(xs: list[np.ndarray], ys: list[np.ndarray], grid: np.ndarray) -> np.ndarray:
    """Curves linearly interpolated onto one grid: array [seeds, len(grid)]."""
    return np.stack([np.interp(grid, x, y) for x, y in zip(xs, ys)])


def mean_over_range(grid: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Trapezoid integral over the grid divided by its length, per row (one point: that value)."""
    if len(grid) < 2 or grid[-1] == grid[0]:
        return values[:, 0]
    return np.trapezoid(values, grid, axis=1) / (grid[-1] - grid[0])


def first_reach(curve: Curve, threshold: float) -> float | None:
    """First logged step whose return is >= threshold; None when never."""
    hits = np.nonzero(curve.values >= threshold)[0]
    return float(curve.steps[hits[0]]) if len(hits) else None


# ---------------------------------------------------------------- tables


def default_threshold(task: str) -> float | None:
    """Gymnasium's registered reward_threshold for a task id (no env is made); None if unknown."""
    try:
        import gymnasium
    except ImportError:
        return None
    try:
        value = gymnasium.spec(task).reward_threshold
    except gymnasium.error.Error:
        return None
    return None if value is None else float(value)


def group(runs: list[Run]) -> dict[str, dict[str, list[Run]]]:
    """Runs by task, then by agent, both sorted by name; runs in seed order."""
    out: dict[str, dict[str, list[Run]]] = {}
    def key(r: Run):
        return r.task, r.agent, (0, r.seed, "") if isinstance(r.seed, int) else (1, 0, str(r.seed))

    for run in sorted(runs, key=key):
        out.setdefault(run.task, {}).setdefault(run.agent, []).append(run)
    return out


def one_run_per_seed(runs: list[Run]) -> tuple[list[Run], list[str]]:
    """Runs with each (task, agent, seed) once, and a note naming every repeat.

    Runs that share a seed are one seed, whatever their directories are called (`seed0` and `seed0_2`,
    or a save/load continuation in a folder of its own). A run that starts beyond the first run's first
    logged step continues it: their curves are merged into one (a step logged twice keeps its latest
    value). A run that starts where the first did is a rerun: the first (by start time, then path) is
    kept and the rerun left out, named in the note.
    """
    by_key: dict[tuple, list[Run]] = {}
    for run in runs:
        by_key.setdefault((run.task, run.agent, run.seed), []).append(run)
    kept, notes = [], []
    for (task, agent, seed), same in by_key.items():
        same = sorted(same, key=lambda r: (r.start_time, str(r.path)))
        first = same[0]
        if len(same) == 1:
            kept.append(first)
            continue
        start = _first_step(first)
        continuations = [r for r in same[1:] if _first_step(r) > start]
        reruns = [r for r in same[1:] if _first_step(r) <= start]
        if continuations:
            merged = {tag: merge_curves([r.scalars[tag] for r in [first, *continuations] if tag in r.scalars])
                      for tag in set().union(*(r.scalars for r in [first, *continuations]))}
            first = Run(first.path, task, agent, seed, merged, first.start_time)
            notes.append(f"{task} / {agent} / seed {seed}: {len(continuations) + 1} runs continue one another "
                         f"({', '.join(str(r.path) for r in [same[0], *continuations])}): one seed, curves merged.")
        if reruns:
            notes.append(f"{task} / {agent} / seed {seed} ran more than once: counted once ({same[0].path}); "
                         f"left out as repeats of the same seed: {', '.join(str(r.path) for r in reruns)}.")
        kept.append(first)
    return kept, notes


def _first_step(run: Run) -> float:
    return min((float(c.steps[0]) for c in run.scalars.values() if len(c.steps)), default=0.0)


def check_tags(task: str, runs: list[Run], tag: str) -> None:
    """CompareError when a run of the task lacks the return tag, or only some have time/fps."""
    for run in runs:
        if tag not in run.scalars:
            have = ", ".join(sorted(run.scalars)) or "no scalar tags"
            raise CompareError(
                f"run {run.name} of task {task} has no scalar tag {tag!r} (it has: {have}); "
                "every run of a task needs the return tag; pick another with --tag"
            )
    with_fps = [r for r in runs if FPS_TAG in r.scalars]
    if with_fps and len(with_fps) < len(runs):
        lacking = ", ".join(str(r.path) for r in runs if FPS_TAG not in r.scalars)
        raise CompareError(
            f"runs of task {task} have mismatched tags: {lacking} lack {FPS_TAG!r}, which the other "
            "runs log; compare runs that log the same tags"
        )


def seed_aucs(curves: list[Curve], auc_range: tuple[float, float]) -> np.ndarray | None:
    """Each seed's mean return over the step range (None when the runs share no steps)."""
    if auc_range[1] < auc_range[0]:
        return None
    xs = [c.steps for c in curves]
    grid = common_grid(xs, *auc_range)
    return mean_over_range(grid, resample(xs, [c.values for c in curves], grid))


#: the per-task statistics of the tables, each over the last axis: rliable's aggregate_mean and aggregate_iqm
#: on one task's runs (IQM is the 25%-trimmed mean; tests/test_compare.py checks they agree). rliable's median
#: is the median over tasks of the per-task means, so it has no per-task column.
SEED_STATISTICS = {
    "mean": lambda x: np.mean(x, axis=-1),
    "iqm": lambda x: stats.trim_mean(x, 0.25, axis=-1),
}


def seed_statistics(finals: np.ndarray, reps: int, seed: int = 0) -> dict:
    """{name: (value, 95% percentile-bootstrap interval or None for one seed)} of one agent's final returns on
    one task. Vectorised over the resamples: on one task the stratified bootstrap is the plain bootstrap over
    seeds, and rliable's per-resample loop would cost seconds per table cell."""
    points = {name: float(f(finals)) for name, f in SEED_STATISTICS.items()}
    if len(finals) < 2:
        return {name: (point, None) for name, point in points.items()}
    resamples = finals[np.random.default_rng(seed).integers(0, len(finals), size=(reps, len(finals)))]
    alpha = 100 * (1 - CONFIDENCE) / 2
    out = {}
    for name, f in SEED_STATISTICS.items():
        lo, hi = np.percentile(f(resamples), [alpha, 100 - alpha])
        out[name] = (points[name], (float(lo), float(hi)))
    return out


def clip_to(interval, bounds) -> tuple[float, float] | None:
    """An interval kept inside a task's possible returns (None stays None; no bounds: unchanged)."""
    if interval is None or bounds is None:
        return interval
    return float(np.clip(interval[0], *bounds)), float(np.clip(interval[1], *bounds))


def agent_row(agent: str, runs: list[Run], tag: str, threshold, auc_range, ci: str, bounds=None, reps: int = REPS) -> Row:
    """The table row of one agent from its seeds' runs."""
    curves = [r.scalars[tag] for r in runs]
    finals = np.array([final_return(c) for c in curves])
    mean, lo, hi = mean_ci(finals[:, None], "t")  # the Student-t interval only when asked for (--ci t)
    stats = seed_statistics(finals, reps)
    final_interval = stats["mean"][1] if ci == "bootstrap" else (None if len(runs) < 2 else (float(lo[0]), float(hi[0])))
    aucs = seed_aucs(curves, auc_range)
    fps = [r.scalars[FPS_TAG].values[-1] for r in runs if FPS_TAG in r.scalars]
    walls = [r.scalars[FPS_TAG].wall[-1] - r.start_time for r in runs if FPS_TAG in r.scalars]
    final_interval = clip_to(final_interval, bounds)
    row = Row(
        agent=agent,
        seeds=len(runs),
        final_mean=float(mean[0]),
        final_ci=None if final_interval is None else (final_interval[1] - final_interval[0]) / 2,
        final_interval=final_interval,
        iqm=stats["iqm"][0], iqm_interval=clip_to(stats["iqm"][1], bounds),
        auc=None if aucs is None else float(aucs.mean()),
        auc_range=auc_range,
        threshold=threshold,
        first_reach=[first_reach(c, threshold) if threshold is not None else None for c in curves],
        fps=float(np.mean(fps)) if fps else None,
        budget=max(r.last_step() for r in runs),
        wall_s=float(np.mean(walls)) if walls else None,
    )
    if len(runs) < 2:
        row.notes.append(f"{agent} has a single seed: no confidence band or interval.")
    elif len(runs) < MIN_SEEDS_FOR_INTERVAL:
        row.notes.append(f"{agent} has only {len(runs)} seeds: an interval from so few says little (the bootstrap's "
                         f"can only span their values); run at least {MIN_SEEDS_FOR_INTERVAL}.")
    return row


def summarize(runs: list[Run], thresholds: dict | None = None, tag: str = RETURN_TAG, ci: str = "bootstrap",
              ranges: dict | None = None, reps: int = REPS):
    """Table rows per task: {task: [Row per agent]}; thresholds default to gymnasium's, possible-return
    ranges to rlgeom.tools.aggregate.RETURN_RANGES."""
    from rlgeom.tools.aggregate import RETURN_RANGES

    if ci not in CI_METHODS:
        raise CompareError(f"unknown confidence interval {ci!r}; accepted: {', '.join(CI_METHODS)}")
    thresholds, ranges = thresholds or {}, {**RETURN_RANGES, **(ranges or {})}
    runs, repeats = one_run_per_seed(runs)
    tables = {}
    for task, by_agent in group(runs).items():
        task_runs = [r for rs in by_agent.values() for r in rs]
        check_tags(task, task_runs, tag)
        threshold = thresholds[task] if task in thresholds else default_threshold(task)
        auc_range = common_range([r.scalars[tag].steps for r in task_runs])
        tables[task] = [agent_row(a, rs, tag, threshold, auc_range, ci, ranges.get(task), reps)
                        for a, rs in by_agent.items()]
        for row in tables[task]:
            row.notes += [n for n in repeats if n.startswith(f"{task} / {row.agent} / ")]
    return tables


def _num(x: float | None, fmt: str = ".2f") -> str:
    """A number for a table cell; n/a for None."""
    return "n/a" if x is None else format(x, fmt)


def steps_cell(row: Row) -> str:
    """Steps-to-threshold cell: median, with (k/n) seeds that reached it when not all did."""
    if row.threshold is None:
        return "no threshold"
    med, frac = row.steps_to_threshold, f"({row.reached}/{row.seeds})"
    if not np.isfinite(med):
        return f"not reached {frac}"
    return f"{med:.0f}" + ("" if row.reached == row.seeds else f" {frac}")


def with_interval(value: float, interval) -> str:
    """'12.30 [10.10, 14.50]', or the value and '(1 seed, no CI)'."""
    return f"{value:.2f} " + (f"[{interval[0]:.2f}, {interval[1]:.2f}]" if interval is not None else "(1 seed, no CI)")


def row_cells(row: Row) -> list[str]:
    """The markdown cells of one row."""
    return [row.agent, str(row.seeds), with_interval(row.final_mean, row.final_interval),
            with_interval(row.iqm, row.iqm_interval),
            _num(row.auc), steps_cell(row), _num(row.fps, ".1f"), _num(row.wall_s, ".0f"), str(row.budget)]


def table_markdown(rows: list[Row], tag: str, ci: str, reps: int = REPS) -> str:
    """A markdown table with footnotes defining every column."""
    thr = rows[0].threshold
    lo, hi = rows[0].auc_range
    head = ["agent", "seeds", "final return¹: mean [95% CI]", "IQM¹ [95% CI]",
            "area under curve²", f"steps to threshold³ ({_num(thr, 'g')})", "FPS⁴", "wall s⁶", "budget⁵ (steps)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    method = "Student-t (mean only)" if ci == "t" else "percentile bootstrap"
    lines += [
        "",
        f"¹ `{tag}`: per seed, the mean over its last {FINAL_FRACTION:.0%} of steps (logged points with "
        f"step ≥ {1 - FINAL_FRACTION:g} × its last step); mean and interquartile mean (IQM: the mean of the "
        f"middle 50%) over seeds, with 95% {method} intervals over seeds (rliable, {reps} resamples for the bootstrap), "
        "kept inside the task's possible returns where they are known.",
        f"² per seed, the return curve linearly resampled on a common grid over the step range all runs "
        f"of this task share [{lo:g}, {hi:g}], trapezoid integral divided by the range; mean over seeds.",
        "³ per seed, the first logged step whose return ≥ threshold; median over seeds (a seed that never "
        "reaches it counts as never); (k/n): k of n seeds reached it.",
        f"⁴ mean over seeds of each run's last `{FPS_TAG}`.  ⁵ largest step logged by any seed.  ⁶ mean over seeds "
        f"of the wall-clock seconds from a run's first event to its last `{FPS_TAG}` (the training, without the "
        "final evaluation; a resumed run's pause counts).",
    ]
    notes = [n for r in rows for n in r.notes]
    return "\n".join(lines + (["", *("Note: " + n for n in notes)] if notes else []))


# ---------------------------------------------------------------- plots


def safe_name(task: str) -> str:
    """A file-name stem for a task id ('ALE/Pong-v5' -> 'ALE_Pong-v5')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", task).strip("_") or "task"


def run_xy(run: Run, tag: str, axis: str) -> tuple[np.ndarray, np.ndarray]:
    """x (steps, or seconds since the run's first event) and y of a run's return curve, x ascending."""
    curve = run.scalars[tag]
    x = curve.steps if axis == "steps" else curve.wall - run.start_time
    order = np.argsort(x, kind="stable")
    return x[order], curve.values[order]


#: axis labels in words for the tags rlgeom and SB3 write
TAG_LABELS = {RETURN_TAG: "episode return (mean of the last 100 episodes)",
              "rollout/ep_len_mean": "episode length (mean of the last 100 episodes)",
              "eval/mean_reward": "evaluation return (mean over episodes)"}
LINESTYLES = ("-", "--", "-.", ":")


def plot_agent(ax, runs: list[Run], tag: str, axis: str, ci: str, style: dict, bounds=None) -> None:
    """Mean across seeds on the common grid and its 95% band, clipped to the possible returns (one seed:
    its curve, no band). The band's edges are drawn too, so overlapping bands stay readable."""
    xy = [run_xy(r, tag, axis) for r in runs]
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    n = len(runs)
    if n == 1:
        ax.plot(xs[0], ys[0], **style, marker="." if len(xs[0]) == 1 else None, label=f"{runs[0].agent} (1 seed)")
        return
    grid = common_grid(xs, *common_range(xs), max_points=MAX_PLOT_POINTS)
    mean, lo, hi = mean_ci(resample(xs, ys, grid), ci)
    if bounds is not None:
        lo, hi = np.clip(lo, *bounds), np.clip(hi, *bounds)
    few = f"; too few seeds for a {CONFIDENCE:.0%} band" if n < MIN_SEEDS_FOR_INTERVAL else ""
    ax.plot(grid, mean, **style, label=f"{runs[0].agent} ({n} seeds{few})")
    ax.fill_between(grid, lo, hi, color=style["color"], alpha=0.15, linewidth=0)
    for edge in (lo, hi):
        ax.plot(grid, edge, color=style["color"], linewidth=0.6, alpha=0.6, linestyle=style["linestyle"])


def new_figure(size=(7.5, 4.8)):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, stem: Path) -> list[Path]:
    """PNG for screens, PDF (vector) for papers."""
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in FIGURE_FORMATS]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")  # nothing cut off: rliable's labels sit outside the axes
    fig.clear()
    return paths


def plot_task(task: str, by_agent: dict[str, list[Run]], tag: str, axis: str, ci: str, styles, stem: Path,
              bounds=None) -> list[Path]:
    """Return against steps or wall-clock time for every agent of a task (PNG and PDF)."""
    fig = new_figure()
    ax = fig.add_subplot()
    for agent, runs in by_agent.items():
        plot_agent(ax, runs, tag, axis, ci, styles[agent], bounds)
    band = "Student-t" if ci == "t" else "bootstrap"
    ax.set(title=f"{task}: mean over seeds; shaded: 95% {band} interval of the mean",
           ylabel=TAG_LABELS.get(tag, tag), xlabel="environment steps" if axis == "steps" else "wall-clock time (s)")
    if bounds is not None:
        ax.axhline(bounds[1], color="0.5", linewidth=0.8, linestyle=":", label=f"best possible return ({bounds[1]:g})")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # outside: never over the curves
    return save_figure(fig, stem)


# ---------------------------------------------------------------- report


def agent_styles(runs: list[Run]) -> dict:
    """One colour (colour-blind safe) and line style per agent, the same in every plot."""
    import seaborn

    agents = sorted({r.agent for r in runs})
    palette = seaborn.color_palette("colorblind", max(len(agents), 1))
    return {a: {"color": palette[i % len(palette)], "linestyle": LINESTYLES[i % len(LINESTYLES)], "linewidth": 1.8}
            for i, a in enumerate(agents)}


def task_section(task: str, rows: list[Row], tag: str, ci: str, level: str = "#", overridden: bool = False,
                 reps: int = REPS) -> str:
    """Markdown for one task: heading, plots and table."""
    stem = safe_name(task)
    thr = rows[0].threshold
    source = "--threshold" if overridden else "gymnasium's reward_threshold" if thr is not None else "none registered"
    return "\n".join([
        f"{level} {task}", "",
        f"Return tag `{tag}`; threshold {_num(thr, 'g')} ({source}).", "",
        f"![return vs steps]({stem}_return_vs_steps.png)",
        f"![return vs wall-clock time]({stem}_return_vs_time.png)", "",
        table_markdown(rows, tag, ci, reps), "",
    ])


def check_threshold_tasks(thresholds: dict, tasks) -> None:
    """CompareError for a --threshold naming a task that has no runs."""
    unknown = sorted(set(thresholds) - set(tasks))
    if unknown:
        raise CompareError(
            f"--threshold names task(s) with no runs: {', '.join(unknown)}; tasks found: {', '.join(sorted(tasks))}"
        )


def write_report(logdir, out=None, thresholds: dict | None = None, tag: str = RETURN_TAG, ci: str = "bootstrap",
                 ranges: dict | None = None, reps: int = REPS, skip_incomplete: bool = False) -> list[Path]:
    """Write plots, per-task markdown and report.md for a log directory; returns the paths written.
    `skip_incomplete`: leave out (and list) the runs that lack the return tag, e.g. a grid's unfinished
    runs before their final evaluation, instead of refusing the directory."""
    from rlgeom.tools.aggregate import RETURN_RANGES

    _require_rliable()
    logdir = Path(logdir)
    out = Path(out) if out is not None else logdir / "report"
    runs = load_runs(logdir)
    check_out_dir(out)  # before any statistic is computed or figure drawn
    left_out = [r for r in runs if tag not in r.scalars] if skip_incomplete else []
    runs = [r for r in runs if tag in r.scalars] if skip_incomplete else runs
    if not runs:
        raise CompareError(f"no run in {logdir} logs {tag!r} yet; nothing to compare")
    thresholds, ranges = thresholds or {}, ranges or {}
    check_threshold_tasks({**thresholds, **ranges}, {r.task for r in runs})
    tables = summarize(runs, thresholds, tag, ci, ranges, reps)
    n_dirs = len(runs)
    runs, repeats = one_run_per_seed(runs)
    ranges = {**RETURN_RANGES, **ranges}
    out.mkdir(parents=True, exist_ok=True)
    styles, grouped, written, sections = agent_styles(runs), group(runs), [], []
    for task, rows in tables.items():
        stem = safe_name(task)
        for axis in ("steps", "time"):
            written += plot_task(task, grouped[task], tag, axis, ci, styles, out / f"{stem}_return_vs_{axis}",
                                 ranges.get(task))
        given = task in thresholds
        (out / f"{stem}.md").write_text(task_section(task, rows, tag, ci, overridden=given, reps=reps))
        written.append(out / f"{stem}.md")
        sections.append(task_section(task, rows, tag, ci, level="##", overridden=given, reps=reps))
    aggregate, paths = across_tasks(grouped, tables, tag, ranges, styles, out, reps)
    written += paths
    counted = f" ({len(runs)} once each seed is counted once)" if n_dirs != len(runs) else ""
    header = f"# rlgeom comparison report\n\nLog directory: `{logdir}`; {n_dirs} runs{counted}, {len(tables)} tasks.\n"
    if repeats:
        header += "\nSeeds counted once:\n" + "".join(f"- {n}\n" for n in repeats)
    if left_out:
        header += (f"\nLeft out, without `{tag}` yet (--skip-incomplete): "
                   + ", ".join(f"{r.task} / {r.agent} / seed {r.seed}" for r in left_out) + ".\n")
    (out / "report.md").write_text("\n".join([header, aggregate, *sections]))
    return written + [out / "report.md"]


def _require_rliable() -> None:
    import importlib.util

    if importlib.util.find_spec("rliable") is None:
        raise CompareError("rlgeom.compare needs rliable for its statistics: pip install 'rlgeom[compare]'")


def across_tasks(grouped, tables, tag: str, ranges: dict, styles, out: Path, reps: int) -> tuple[str, list[Path]]:
    """The aggregate section of report.md and its three figures (rlgeom.tools.aggregate, with rliable)."""
    from rlgeom.tools import aggregate as agg

    finals = {task: {agent: np.array([final_return(r.scalars[tag]) for r in runs]) for agent, runs in by_agent.items()}
              for task, by_agent in grouped.items()}
    norms = {task: agg.normalisation(task, np.concatenate(list(finals[task].values())), rows[0].threshold, ranges)
             for task, rows in tables.items()}
    scores, tasks, notes = agg.score_matrices(finals, norms)
    if not tasks:
        return "## Across tasks\n\nNo task was run by every agent: no aggregate.\n", []
    points, intervals = agg.interval_estimates(scores, reps)
    probabilities, prob_intervals = agg.improvement_probabilities(scores, reps)
    taus = profile_taus(scores)
    profiles, profile_cis = agg.performance_profiles(scores, taus, reps)
    paths = plot_aggregates(points, intervals, styles, out / "aggregate_metrics")
    paths += plot_profiles(profiles, profile_cis, taus, styles, out / "performance_profile")
    if probabilities:
        paths += plot_improvement(probabilities, prob_intervals, out / "probability_of_improvement")
    text = agg.aggregate_markdown(scores, points, intervals, probabilities, prob_intervals, tasks, norms, notes, reps)
    figures = ["![aggregate metrics](aggregate_metrics.png)", "![performance profiles](performance_profile.png)"]
    if probabilities:
        figures.append("![probability of improvement](probability_of_improvement.png)")
    return text + "\n" + "\n".join(figures) + "\n", paths


def profile_taus(scores: dict[str, np.ndarray], points: int = 61) -> np.ndarray:
    """The performance profiles' thresholds τ over the range of the normalised scores (from 0, or below it
    where a score is negative, to the highest score), so the x-axis shows where the runs lie."""
    values = np.concatenate([np.ravel(m) for m in scores.values()])
    low, high = min(0.0, float(values.min())), float(values.max())
    return np.linspace(low, high if high > low else low + 1.0, points)


def visible_interval(interval, width: float = 0.02) -> tuple[float, float]:
    """An interval on [0, 1] drawn at least `width` wide (centred on it, kept inside [0, 1]): a bar of P = 1.0
    [1, 1] would have no width and leave its row looking empty."""
    low, high = (float(v) for v in np.ravel(interval))
    if high - low >= width:
        return low, high
    start = min(max((low + high - width) / 2, 0.0), 1.0 - width)
    return start, start + width


def plot_aggregates(points, intervals, styles, stem: Path) -> list[Path]:
    """IQM, mean, median and optimality gap per agent with their 95% intervals (rliable's layout)."""
    from rliable import plot_utils

    agents = sorted(points)
    fig, _ = plot_utils.plot_interval_estimates(
        points, intervals, metric_names=["IQM", "Mean", "Median", "Optimality gap"], algorithms=agents,
        colors={a: styles[a]["color"] for a in agents}, row_height=0.6, xlabel="")
    # rliable places its x label at a fixed offset that overlaps the ticks of a short figure: ours goes below
    fig.text(0.5, -0.45 / len(agents) - 0.1, "normalised score (0: lowest return, 1: threshold); "
             "bars: 95% stratified-bootstrap intervals, line: point estimate", ha="center", va="top")
    paths = [stem.with_name(f"{stem.name}.{ext}") for ext in FIGURE_FORMATS]
    for path in paths:
        fig.savefig(path, dpi=150, bbox_inches="tight")
    _close(fig)
    return paths


def plot_profiles(profiles, profile_cis, taus, styles, stem: Path) -> list[Path]:
    """Performance profiles: the fraction of runs whose normalised score exceeds τ, with 95% bands."""
    from rliable import plot_utils

    fig = new_figure((7.5, 4.8))
    ax = fig.add_subplot()
    agents = sorted(profiles)
    plot_utils.plot_performance_profiles(
        {a: profiles[a] for a in agents}, taus, performance_profile_cis={a: profile_cis[a] for a in agents}, ax=ax,
        colors={a: styles[a]["color"] for a in agents}, linestyles={a: styles[a]["linestyle"] for a in agents},
        xlabel="normalised score τ (0: lowest return, 1: threshold)", ylabel="fraction of runs with score > τ")
    ax.set_title("Performance profiles over all tasks and seeds (shaded: 95% CI)")
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=styles[a]["color"], linestyle=styles[a]["linestyle"], linewidth=2) for a in agents]
    ax.legend(handles, agents, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return save_figure(fig, stem)


def plot_improvement(probabilities, intervals, stem: Path) -> list[Path]:
    """P(X > Y) for each pair of agents with its 95% interval."""
    from rliable import plot_utils

    fig = new_figure((6.0, 0.6 * len(probabilities) + 1.5))
    ax = fig.add_subplot()
    shown = {pair: visible_interval(interval) for pair, interval in intervals.items()}
    plot_utils.plot_probability_of_improvement(probabilities, shown, ax=ax, xticks=[0, 0.25, 0.5, 0.75, 1],
                                               xlabel="P(X > Y): a run of X beats a run of Y on a task "
                                                      "(◆: the estimate; bars at least 0.02 wide)")
    for row, value in enumerate(probabilities.values()):
        ax.plot(float(np.ravel(value)[0]), row, marker="D", color="k", markersize=5, zorder=3, clip_on=False)
    ax.set_xlim(-0.02, 1.02)
    return save_figure(fig, stem)


def _close(fig) -> None:
    import matplotlib.pyplot as plt

    plt.close(fig)


def parse_ranges(items: list[str]) -> dict[str, tuple[float, float]]:
    """{task: (low, high)} from TASK=LO:HI strings; CompareError on a malformed one."""
    out = {}
    for item in items:
        task, _, value = item.rpartition("=")
        low, _, high = value.partition(":")
        try:
            bounds = (float(low), float(high))
        except ValueError:
            bounds = None
        if not task or bounds is None or not bounds[0] < bounds[1]:
            raise CompareError(f"--return-range expects TASK=LOW:HIGH with LOW < HIGH, e.g. CartPole-v1=0:500; "
                               f"got {item!r}")
        out[task] = bounds
    return out


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """{task: value} from TASK=VALUE strings; CompareError on a malformed one."""
    out = {}
    for item in items:
        task, _, value = item.rpartition("=")
        if not task or not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
            raise CompareError(f"--threshold expects TASK=VALUE with a number, e.g. CartPole-v1=475; got {item!r}")
        out[task] = float(value)
    return out


def check_out_dir(out) -> None:
    """--out must be a folder that can be made and written (not an existing file): refused before any run is read."""
    if out is None:
        return
    from rlgeom.persistence.outputs import OutputError, ensure_writable_dir

    if os.path.exists(out) and not os.path.isdir(out):
        raise CompareError(f"--out {out} is an existing file; give a folder for the report (it is created if missing)")
    try:
        ensure_writable_dir(out, "report folder (--out)")
    except OutputError as err:
        raise CompareError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="python -m rlgeom.compare", description=__doc__.splitlines()[0])
    p.add_argument("logdir", help="directory of TensorBoard runs")
    p.add_argument("--out", help="output directory (default LOGDIR/report)")
    p.add_argument("--threshold", action="append", default=[], metavar="TASK=VALUE",
                   help="return threshold of a task (default: gymnasium's reward_threshold)")
    p.add_argument("--tag", default=RETURN_TAG, help=f"return scalar tag (default {RETURN_TAG})")
    p.add_argument("--return-range", action="append", default=[], metavar="TASK=LO:HI",
                   help="lowest and highest possible return of a task: bands are kept inside, scores normalised "
                        "from LO (default: known classic-control ranges)")
    p.add_argument("--ci", choices=CI_METHODS, default="bootstrap",
                   help="95%% interval of the mean: percentile bootstrap (default) or Student-t")
    p.add_argument("--reps", type=int, default=REPS, help=f"bootstrap resamples (default {REPS})")
    p.add_argument("--skip-incomplete", action="store_true",
                   help="leave out (and list) runs without the return tag, e.g. a grid's unfinished runs")
    return p


def main(argv=None) -> int:
    """CLI entry point: 0 on success, 2 with 'error: ...' on stderr for bad input."""
    args = build_parser().parse_args(argv)
    try:
        if not MIN_REPS <= args.reps <= MAX_REPS:
            raise CompareError(f"--reps must be from {MIN_REPS} (for a 95% interval) to {MAX_REPS:,} (rliable's default "
                               f"for its aggregates; more takes hours and gigabytes), got {args.reps}")
        paths = write_report(args.logdir, args.out, parse_thresholds(args.threshold), args.tag, args.ci,
                             parse_ranges(args.return_range), args.reps, args.skip_incomplete)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
