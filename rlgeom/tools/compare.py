"""Turn a TensorBoard log directory into comparison plots and markdown tables.

    python -m rlgeom.compare LOGDIR [--out DIR] [--threshold TASK=VALUE ...]
                                    [--tag rollout/ep_rew_mean] [--ci t|bootstrap]

Per task: ``<task>_return_vs_steps.png``, ``<task>_return_vs_time.png`` and ``<task>.md``; plus a
combined ``report.md``. Runs are discovered and read by :mod:`rlgeom.persistence.runlogs`.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rlgeom.persistence.runlogs import CompareError, Curve, Run, load_runs

__all__ = ["CompareError", "Run", "Row", "load_runs", "summarize", "write_report", "main"]

RETURN_TAG = "rollout/ep_rew_mean"
FPS_TAG = "time/fps"
FINAL_FRACTION = 0.1
CONFIDENCE = 0.95
BOOTSTRAP_SAMPLES = 2000
MAX_PLOT_POINTS = 500
CI_METHODS = ("t", "bootstrap")


@dataclass
class Row:
    """One agent's line of a task table; numbers are None where undefined."""

    agent: str
    seeds: int
    final_mean: float
    final_ci: float | None
    auc: float | None
    auc_range: tuple[float, float]
    threshold: float | None
    first_reach: list[float | None]
    fps: float | None
    budget: int
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


def mean_ci(samples: np.ndarray, ci: str = "t", seed: int = 0):
    """Mean over seeds (axis 0) and the lower/upper 95% bounds; bounds are NaN for one seed."""
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
    from scipy import stats

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


def agent_row(agent: str, runs: list[Run], tag: str, threshold, auc_range, ci: str) -> Row:
    """The table row of one agent from its seeds' runs."""
    curves = [r.scalars[tag] for r in runs]
    finals = np.array([final_return(c) for c in curves])
    mean, lo, hi = mean_ci(finals[:, None], ci)
    aucs = seed_aucs(curves, auc_range)
    fps = [r.scalars[FPS_TAG].values[-1] for r in runs if FPS_TAG in r.scalars]
    row = Row(
        agent=agent,
        seeds=len(runs),
        final_mean=float(mean[0]),
        final_ci=None if len(runs) < 2 else float(hi[0] - lo[0]) / 2,
        auc=None if aucs is None else float(aucs.mean()),
        auc_range=auc_range,
        threshold=threshold,
        first_reach=[first_reach(c, threshold) if threshold is not None else None for c in curves],
        fps=float(np.mean(fps)) if fps else None,
        budget=max(r.last_step() for r in runs),
    )
    if len(runs) < 2:
        row.notes.append(f"{agent} has a single seed: no confidence band or interval.")
    return row


def summarize(runs: list[Run], thresholds: dict | None = None, tag: str = RETURN_TAG, ci: str = "t"):
    """Table rows per task: {task: [Row per agent]}; thresholds default to gymnasium's."""
    if ci not in CI_METHODS:
        raise CompareError(f"unknown confidence interval {ci!r}; accepted: {', '.join(CI_METHODS)}")
    thresholds = thresholds or {}
    tables = {}
    for task, by_agent in group(runs).items():
        task_runs = [r for rs in by_agent.values() for r in rs]
        check_tags(task, task_runs, tag)
        threshold = thresholds[task] if task in thresholds else default_threshold(task)
        auc_range = common_range([r.scalars[tag].steps for r in task_runs])
        tables[task] = [agent_row(a, rs, tag, threshold, auc_range, ci) for a, rs in by_agent.items()]
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


def row_cells(row: Row) -> list[str]:
    """The markdown cells of one row."""
    ci = f"± {row.final_ci:.2f}" if row.final_ci is not None else "(1 seed, no CI)"
    final = f"{row.final_mean:.2f} {ci}"
    return [row.agent, str(row.seeds), final, _num(row.auc), steps_cell(row), _num(row.fps, ".1f"), str(row.budget)]


def table_markdown(rows: list[Row], tag: str, ci: str) -> str:
    """A markdown table with footnotes defining every column."""
    thr = rows[0].threshold
    lo, hi = rows[0].auc_range
    head = ["agent", "seeds", "final return¹ (mean ± 95% CI)", "area under curve²",
            f"steps to threshold³ ({_num(thr, 'g')})", "FPS⁴", "budget⁵ (steps)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(row_cells(r)) + " |" for r in rows]
    method = "Student-t" if ci == "t" else f"percentile bootstrap ({BOOTSTRAP_SAMPLES} resamples)"
    lines += [
        "",
        f"¹ `{tag}`: per seed, the mean over its last {FINAL_FRACTION:.0%} of steps (logged points with "
        f"step ≥ {1 - FINAL_FRACTION:g} × its last step); mean over seeds ± half-width of the 95% {method} "
        "interval.",
        f"² per seed, the return curve linearly resampled on a common grid over the step range all runs "
        f"of this task share [{lo:g}, {hi:g}], trapezoid integral divided by the range; mean over seeds.",
        "³ per seed, the first logged step whose return ≥ threshold; median over seeds (a seed that never "
        "reaches it counts as never); (k/n): k of n seeds reached it.",
        f"⁴ mean over seeds of each run's last `{FPS_TAG}`.  ⁵ largest step logged by any seed.",
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


def plot_agent(ax, runs: list[Run], tag: str, axis: str, ci: str, color) -> None:
    """Mean across seeds on the common grid and its 95% band (one seed: its curve, no band)."""
    xy = [run_xy(r, tag, axis) for r in runs]
    xs, ys = [p[0] for p in xy], [p[1] for p in xy]
    n = len(runs)
    if n == 1:
        ax.plot(xs[0], ys[0], color=color, marker="." if len(xs[0]) == 1 else None,
                label=f"{runs[0].agent} (n=1, no band)")
        return
    grid = common_grid(xs, *common_range(xs), max_points=MAX_PLOT_POINTS)
    mean, lo, hi = mean_ci(resample(xs, ys, grid), ci)
    ax.plot(grid, mean, color=color, label=f"{runs[0].agent} (n={n})")
    ax.fill_between(grid, lo, hi, color=color, alpha=0.25, linewidth=0)


def plot_task(task: str, by_agent: dict[str, list[Run]], tag: str, axis: str, ci: str, colors, path: Path) -> Path:
    """One PNG of return against steps or wall-clock time for every agent of a task."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 4.5), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for agent, runs in by_agent.items():
        plot_agent(ax, runs, tag, axis, ci, colors[agent])
    band = "95% CI, Student-t" if ci == "t" else "95% CI, bootstrap"
    ax.set(title=f"{task}: mean over seeds, band = {band}", ylabel=tag,
           xlabel="environment steps" if axis == "steps" else "wall-clock time (s)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100)
    fig.clear()
    return path


# ---------------------------------------------------------------- report


def agent_colors(runs: list[Run]) -> dict:
    """One colour per agent, the same in every task's plots."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {a: cmap(i % 10) for i, a in enumerate(sorted({r.agent for r in runs}))}


def task_section(task: str, rows: list[Row], tag: str, ci: str, level: str = "#", overridden: bool = False) -> str:
    """Markdown for one task: heading, plots and table."""
    stem = safe_name(task)
    thr = rows[0].threshold
    source = "--threshold" if overridden else "gymnasium's reward_threshold" if thr is not None else "none registered"
    return "\n".join([
        f"{level} {task}", "",
        f"Return tag `{tag}`; threshold {_num(thr, 'g')} ({source}).", "",
        f"![return vs steps]({stem}_return_vs_steps.png)",
        f"![return vs wall-clock time]({stem}_return_vs_time.png)", "",
        table_markdown(rows, tag, ci), "",
    ])


def check_threshold_tasks(thresholds: dict, tasks) -> None:
    """CompareError for a --threshold naming a task that has no runs."""
    unknown = sorted(set(thresholds) - set(tasks))
    if unknown:
        raise CompareError(
            f"--threshold names task(s) with no runs: {', '.join(unknown)}; tasks found: {', '.join(sorted(tasks))}"
        )


def write_report(logdir, out=None, thresholds: dict | None = None, tag: str = RETURN_TAG, ci: str = "t") -> list[Path]:
    """Write plots, per-task markdown and report.md for a log directory; returns the paths written."""
    logdir = Path(logdir)
    out = Path(out) if out is not None else logdir / "report"
    runs = load_runs(logdir)
    thresholds = thresholds or {}
    check_threshold_tasks(thresholds, {r.task for r in runs})
    tables = summarize(runs, thresholds, tag, ci)
    out.mkdir(parents=True, exist_ok=True)
    colors, grouped, written, sections = agent_colors(runs), group(runs), [], []
    for task, rows in tables.items():
        stem = safe_name(task)
        for axis in ("steps", "time"):
            written.append(plot_task(task, grouped[task], tag, axis, ci, colors, out / f"{stem}_return_vs_{axis}.png"))
        given = task in thresholds
        (out / f"{stem}.md").write_text(task_section(task, rows, tag, ci, overridden=given))
        written.append(out / f"{stem}.md")
        sections.append(task_section(task, rows, tag, ci, level="##", overridden=given))
    header = f"# rlgeom comparison report\n\nLog directory: `{logdir}`; {len(runs)} runs, {len(tables)} tasks.\n"
    (out / "report.md").write_text("\n".join([header, *sections]))
    return written + [out / "report.md"]


def parse_thresholds(items: list[str]) -> dict[str, float]:
    """{task: value} from TASK=VALUE strings; CompareError on a malformed one."""
    out = {}
    for item in items:
        task, _, value = item.rpartition("=")
        if not task or not re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", value.strip()):
            raise CompareError(f"--threshold expects TASK=VALUE with a number, e.g. CartPole-v1=475; got {item!r}")
        out[task] = float(value)
    return out


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    p = argparse.ArgumentParser(prog="python -m rlgeom.compare", description=__doc__.splitlines()[0])
    p.add_argument("logdir", help="directory of TensorBoard runs")
    p.add_argument("--out", help="output directory (default LOGDIR/report)")
    p.add_argument("--threshold", action="append", default=[], metavar="TASK=VALUE",
                   help="return threshold of a task (default: gymnasium's reward_threshold)")
    p.add_argument("--tag", default=RETURN_TAG, help=f"return scalar tag (default {RETURN_TAG})")
    p.add_argument("--ci", choices=CI_METHODS, default="t", help="95%% interval: Student-t or bootstrap")
    return p


def main(argv=None) -> int:
    """CLI entry point: 0 on success, 2 with 'error: ...' on stderr for bad input."""
    args = build_parser().parse_args(argv)
    try:
        paths = write_report(args.logdir, args.out, parse_thresholds(args.threshold), args.tag, args.ci)
    except CompareError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
