"""rlgeom.tools.compare on a synthetic TensorBoard log directory with known linear curves."""

import itertools
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from rlgeom.tools.compare import CompareError, load_runs, main, run_xy, summarize, table_markdown, write_report

REPO = Path(__file__).resolve().parents[1]
T975_DF1 = 12.706204736174703  # Student-t 0.975 quantile, 1 degree of freedom
T975_DF2 = 4.302652729749464  # ... 2 degrees of freedom


def write_run(run_dir: Path, steps, values, fps=None, tag="rollout/ep_rew_mean", meta=None, wall=None):
    """One run directory: return (and optionally time/fps) scalars at the given steps."""
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    if meta is not None:
        (run_dir / "run.json").write_text(json.dumps(meta))
    writer = SummaryWriter(str(run_dir))
    for i, (s, v) in enumerate(zip(steps, values)):
        writer.add_scalar(tag, v, s, walltime=None if wall is None else wall[i])
        if fps is not None:
            writer.add_scalar("time/fps", fps + i, s, walltime=None if wall is None else wall[i])  # last: fps + len - 1
    writer.flush()
    writer.close()


@pytest.fixture(scope="module")
def logdir(tmp_path_factory):
    """Two tasks x two agents (2-3 seeds), an SB3-style single-seed task, a run.json run."""
    root = tmp_path_factory.mktemp("logs")
    s = np.arange(0, 1001, 50)
    for k, slope in enumerate([0.4, 0.5, 0.6]):  # CartPole-v1 / ppo: y = slope * step
        write_run(root / "CartPole-v1" / "ppo" / f"seed{k}", s, slope * s, fps=1000 + 100 * k - (len(s) - 1))
    s = np.arange(0, 801, 100)
    for k in range(2):  # CartPole-v1 / vpg: y = step/4 + 20k
        write_run(root / "CartPole-v1" / "vpg" / f"seed{k}", s, 0.25 * s + 20 * k, fps=500 + 200 * k - (len(s) - 1))
    s = np.arange(0, 401, 100)
    for k in range(2):  # Toy-v0 / ppo: y = step/100 + k, no time/fps
        write_run(root / "Toy-v0" / "ppo" / f"seed{k}", s, 0.01 * s + k)
    write_run(root / "Toy-v0" / "trpo" / "seed3", s, 0.02 * s + 2)
    write_run(root / "Toy-v0" / "custom_dir", s, 0.02 * s, meta={"env_id": "Toy-v0", "algo": "trpo", "seed": 7})
    s = np.arange(0, 1001, 100)
    write_run(root / "Solo-v0" / "PPO_1", s, s / 100.0, fps=50)  # SB3 tb_log_name layout, one seed
    write_run(root / "A2C_2", [0, 100], [1.0, 1.0])  # SB3 layout without a task
    return root


@pytest.fixture(scope="module")
def tables(logdir):
    return summarize(load_runs(logdir), {"Toy-v0": 5.0}, ci="t", reps=200)  # Student-t: known closed forms


def by_agent(rows):
    return {r.agent: r for r in rows}


def test_discovery(logdir):
    ids = sorted((r.task, r.agent, str(r.seed)) for r in load_runs(logdir))
    assert ids == sorted([
        ("CartPole-v1", "ppo", "0"), ("CartPole-v1", "ppo", "1"), ("CartPole-v1", "ppo", "2"),
        ("CartPole-v1", "vpg", "0"), ("CartPole-v1", "vpg", "1"),
        ("Toy-v0", "ppo", "0"), ("Toy-v0", "ppo", "1"), ("Toy-v0", "trpo", "3"), ("Toy-v0", "trpo", "7"),
        ("Solo-v0", "PPO", "1"), ("unknown", "A2C", "2"),
    ])


def test_cartpole_table(tables):
    rows = by_agent(tables["CartPole-v1"])
    ppo, vpg = rows["ppo"], rows["vpg"]
    assert (ppo.seeds, vpg.seeds) == (3, 2)
    assert ppo.threshold == 475.0  # gymnasium's registered reward_threshold
    # final: mean of steps 900, 950, 1000 -> slope * 950 = 380, 475, 570
    assert ppo.final_mean == pytest.approx(475.0)
    half = T975_DF2 * 95.0 / np.sqrt(3)
    assert ppo.final_interval == pytest.approx((475.0 - half, 500.0))  # kept inside CartPole's returns [0, 500]
    # vpg final: only step 800 is in the last 10% -> 200, 220
    assert vpg.final_mean == pytest.approx(210.0)
    assert vpg.final_ci == pytest.approx(T975_DF1 * np.std([200, 220], ddof=1) / np.sqrt(2))
    # AUC over the task's common range [0, 800]: mean of a line = its midpoint value
    assert ppo.auc_range == (0.0, 800.0)
    assert ppo.auc == pytest.approx(0.5 * 400)
    assert vpg.auc == pytest.approx(0.25 * 400 + 10)
    # first step >= 475: slope 0.4 never, 0.5 -> 950, 0.6 -> 800 (792 rounded up to the 50 grid)
    assert ppo.first_reach == [None, 950.0, 800.0]
    assert ppo.steps_to_threshold == 950.0 and ppo.reached == 2
    assert vpg.reached == 0 and vpg.steps_to_threshold == np.inf
    assert ppo.fps == pytest.approx(1100.0) and vpg.fps == pytest.approx(600.0)
    assert (ppo.budget, vpg.budget) == (1000, 800)


def test_toy_and_single_seed_tables(tables):
    toy = by_agent(tables["Toy-v0"])
    assert toy["ppo"].final_mean == pytest.approx(4.5)
    assert toy["ppo"].final_ci == pytest.approx(T975_DF1 * 0.5)
    assert toy["ppo"].auc == pytest.approx(2.5) and toy["trpo"].auc == pytest.approx(5.0)
    assert toy["ppo"].first_reach == [None, 400.0] and toy["ppo"].steps_to_threshold == np.inf
    assert toy["trpo"].first_reach == [200.0, 250.0 + 50.0]  # seeds "3" then "7"
    assert toy["trpo"].steps_to_threshold == 250.0
    assert toy["ppo"].fps is None
    solo = tables["Solo-v0"][0]
    assert (solo.agent, solo.seeds, solo.final_ci, solo.threshold) == ("PPO", 1, None, None)
    assert solo.final_mean == pytest.approx(9.5) and solo.auc == pytest.approx(5.0)
    assert solo.fps == pytest.approx(50 + 10) and any("single seed" in n for n in solo.notes)


def test_bootstrap_two_seeds(logdir):
    toy = by_agent(summarize(load_runs(logdir), {"Toy-v0": 5.0}, reps=500)["Toy-v0"])  # bootstrap: the default
    assert toy["ppo"].final_ci == pytest.approx(0.5)  # bootstrap means span the two seeds 4 and 5
    assert toy["ppo"].final_interval == pytest.approx((4.0, 5.0)) and toy["ppo"].iqm_interval == pytest.approx((4.0, 5.0))


def test_bands_and_intervals_stay_inside_the_possible_returns(tmp_path):
    """Two CartPole seeds at 0 and 500: Student-t's interval reaches far below 0 and above 500; the bootstrap
    interval and the curve band stay in [0, 500] (CartPole's possible returns)."""
    s = np.arange(0, 501, 100)
    write_run(tmp_path / "CartPole-v1" / "ppo" / "seed0", s, 0 * s)
    write_run(tmp_path / "CartPole-v1" / "ppo" / "seed1", s, 0 * s + 500.0)
    runs = load_runs(tmp_path)
    (t_row,) = summarize(runs, ci="t", reps=200)["CartPole-v1"]
    assert t_row.final_interval[0] == 0.0 and t_row.final_interval[1] == 500.0  # clipped, else ±3177
    (row,) = summarize(runs, reps=200)["CartPole-v1"]
    assert 0.0 <= row.final_interval[0] <= row.final_interval[1] <= 500.0
    from rlgeom.tools.compare import mean_ci

    _, lo, hi = mean_ci(np.array([[0.0], [500.0]]), "t")
    assert lo[0] < -1000  # what the old default drew for CartPole


def test_table_statistics_agree_with_rliable():
    from rliable import metrics

    from rlgeom.tools.compare import SEED_STATISTICS

    x = np.array([3.0, 9.0, 1.0, 4.0, 7.0, 30.0, 2.0, 5.0])
    assert SEED_STATISTICS["iqm"](x) == pytest.approx(metrics.aggregate_iqm(x[:, None]))
    assert SEED_STATISTICS["mean"](x) == pytest.approx(metrics.aggregate_mean(x[:, None]))
    # rliable's median is over tasks of the per-task mean: on one task it is the mean, hence no per-task column
    assert metrics.aggregate_median(x[:, None]) == pytest.approx(x.mean())


def test_aggregates_across_tasks_with_rliable(tmp_path):
    """ppo beats vpg on both tasks in every seed: P(ppo > vpg) = 1, its IQM is higher, its optimality gap lower."""
    from rlgeom.tools import aggregate as agg

    s = np.arange(0, 501, 100)
    for k in range(3):
        write_run(tmp_path / "CartPole-v1" / "ppo" / f"seed{k}", s, 0 * s + 400 + 10 * k)
        write_run(tmp_path / "CartPole-v1" / "vpg" / f"seed{k}", s, 0 * s + 100 + 10 * k)
        write_run(tmp_path / "Acrobot-v1" / "ppo" / f"seed{k}", s, 0 * s - 100 - 10 * k)
        write_run(tmp_path / "Acrobot-v1" / "vpg" / f"seed{k}", s, 0 * s - 400 - 10 * k)
    paths = write_report(tmp_path, tmp_path / "rep", reps=100)
    names = {p.name for p in paths}
    for stem in ("aggregate_metrics", "performance_profile", "probability_of_improvement", "CartPole-v1_return_vs_steps"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names
    report = (tmp_path / "rep" / "report.md").read_text()
    assert "| ppo | vpg | 1.000 [1.000, 1.000] |" in report
    assert "CartPole-v1: 0 = 0 (lowest possible return), 1 = 475 (reward threshold)" in report
    norm = agg.normalisation("CartPole-v1", np.array([100.0, 400.0]), 475.0, agg.RETURN_RANGES)
    finals = {"CartPole-v1": {"ppo": np.array([400.0, 410, 420]), "vpg": np.array([100.0, 110, 120])}}
    scores, tasks, notes = agg.score_matrices(finals, {"CartPole-v1": norm})
    points, intervals = agg.interval_estimates(scores, reps=200)
    assert points["ppo"][0] == pytest.approx(410 / 475) and points["ppo"][3] == pytest.approx(1 - 410 / 475)
    assert intervals["ppo"][0][0] <= points["ppo"][0] <= intervals["ppo"][1][0]
    assert points["vpg"][0] < points["ppo"][0] and not notes


def test_report_files_and_markdown(logdir, tmp_path):
    paths = write_report(logdir, tmp_path / "rep", thresholds={"Toy-v0": 5.0}, reps=200)
    names = {p.name for p in paths}
    for stem in ("CartPole-v1", "Toy-v0", "Solo-v0", "unknown"):
        assert {f"{stem}_return_vs_steps.png", f"{stem}_return_vs_time.png", f"{stem}.md"} <= names
    assert "report.md" in names
    for p in paths:
        assert p.stat().st_size > 0
        if p.suffix == ".png":
            assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cart = (tmp_path / "rep" / "CartPole-v1.md").read_text()
    # bootstrap intervals over the seeds' finals (380, 475, 570 and 200, 220), inside CartPole's [0, 500]
    assert re.search(r"\| ppo \| 3 \| 475\.00 \[3\d\d\.\d\d, 500\.00\] \| 475\.00 \[.*\] \| 200\.00 \| 950 \(2/3\) \| 1100\.0 \| \d+ \| 1000 \|", cart)
    assert re.search(r"\| vpg \| 2 \| 210\.00 \[200\.00, 220\.00\] \| .* \| 110\.00 \| not reached \(0/2\) \| 600\.0 \| \d+ \| 800 \|", cart)
    solo = (tmp_path / "rep" / "Solo-v0.md").read_text()
    assert "9.50 (1 seed, no CI)" in solo and "no threshold" in solo and "single seed" in solo
    assert "threshold 475 (gymnasium's reward_threshold)" in cart
    toy = (tmp_path / "rep" / "Toy-v0.md").read_text()
    assert "| ppo | 2 | 4.50 [4.00, 5.00] | 4.50 [4.00, 5.00] | 2.50 | not reached (1/2) | n/a | n/a | 400 |" in toy
    report = (tmp_path / "rep" / "report.md").read_text()
    assert all(f"## {t}" in report for t in ("CartPole-v1", "Toy-v0", "Solo-v0", "unknown"))


def run_main(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def test_cli_empty_and_missing_dir(tmp_path, capsys):
    code, err = run_main([tmp_path], capsys)
    assert code == 2 and err.startswith("error: no TensorBoard event files") and "Traceback" not in err
    code, err = run_main([tmp_path / "nope"], capsys)
    assert code == 2 and "does not exist" in err


def test_cli_missing_return_tag(tmp_path, capsys):
    write_run(tmp_path / "Toy-v0" / "ppo" / "seed0", [0, 100], [1.0, 2.0])
    write_run(tmp_path / "Toy-v0" / "ppo" / "seed1", [0, 100], [1.0, 2.0], tag="train/loss")
    code, err = run_main([tmp_path], capsys)
    assert code == 2 and "seed1" in err and "rollout/ep_rew_mean" in err and "train/loss" in err


def test_cli_unreadable_file_and_bad_threshold(tmp_path, capsys, logdir):
    bad = tmp_path / "Toy-v0" / "ppo" / "seed0" / "events.out.tfevents.1.host"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"this is not a tensorboard record" * 4)
    code, err = run_main([tmp_path], capsys)
    assert code == 2 and str(bad) in err
    code, err = run_main([logdir, "--out", tmp_path / "o", "--threshold", "CartPole-v1"], capsys)
    assert code == 2 and "TASK=VALUE" in err
    code, err = run_main([logdir, "--out", tmp_path / "o", "--threshold", "Nope-v0=1"], capsys)
    assert code == 2 and "Nope-v0" in err and "CartPole-v1" in err


def test_cli_out_onto_a_file_or_an_unwritable_place_and_absurd_reps_are_clear_errors(tmp_path, capsys, logdir):
    """Issue 30, item 18: exit 2 with the reason, no traceback, and the file given as --out left as it was."""
    existing = tmp_path / "notes.txt"
    existing.write_text("mine")
    for out, message in ((existing, "is an existing file; give a folder"),
                         (existing / "sub", "cannot be written: a part of the path is a file")):
        code, err = run_main([logdir, "--out", out], capsys)
        assert code == 2 and message in err and "Traceback" not in err, err
    assert existing.read_text() == "mine"
    for reps in ("99999999999", "99", "-1"):
        start = time.perf_counter()
        code, err = run_main([logdir, "--out", tmp_path / "o", "--reps", reps], capsys)
        assert code == 2 and "--reps must be from 100 (for a 95% interval) to 50,000" in err and "Traceback" not in err
        assert time.perf_counter() - start < 5 and not (tmp_path / "o").exists()


def test_wall_clock_axis(tmp_path):
    write_run(tmp_path / "Toy-v0" / "ppo" / "seed0", [0, 100, 200], [1.0, 2.0, 3.0], wall=[1000.0, 1010.0, 1030.0])
    (run,) = load_runs(tmp_path)
    x, y = run_xy(run, "rollout/ep_rew_mean", "time")
    assert x.tolist() == [0.0, 10.0, 30.0] and y.tolist() == [1.0, 2.0, 3.0]


def test_wall_time_column_is_the_training_span(tmp_path):
    """Per seed, first event to the last time/fps (the final evaluation logged after it is left out); mean."""
    for k, walls in enumerate([[1000.0, 1010.0, 1030.0], [2000.0, 2050.0, 2090.0]]):
        run_dir = tmp_path / "Toy-v0" / "ppo" / f"seed{k}"
        write_run(run_dir, [0, 100, 200], [1.0, 2.0, 3.0], fps=10, wall=walls)
        write_run(run_dir, [200], [3.0], tag="eval/mean_reward", wall=[walls[-1] + 500.0])
    (row,) = summarize(load_runs(tmp_path), reps=200)["Toy-v0"]
    assert row.wall_s == pytest.approx((30.0 + 90.0) / 2)
    assert "| 60 |" in table_markdown([row], "rollout/ep_rew_mean", "bootstrap", reps=200)


def test_skip_incomplete_leaves_out_and_lists_unfinished_runs(tmp_path, capsys):
    """A grid half-way: the runs without their final evaluation's tag are refused by default, and left out
    (named in report.md) with --skip-incomplete."""
    for k in range(3):
        run_dir = tmp_path / "Toy-v0" / "ppo" / f"seed{k}"
        write_run(run_dir, [0, 100, 200], [1.0, 2.0, 3.0 + k], fps=10)
        if k < 2:
            write_run(run_dir, [200], [5.0 + k], tag="eval/mean_reward")
    code, err = run_main([tmp_path, "--out", tmp_path / "a", "--tag", "eval/mean_reward", "--reps", "200"], capsys)
    assert code == 2 and "seed2" in err and "eval/mean_reward" in err
    code, _ = run_main([tmp_path, "--out", tmp_path / "b", "--tag", "eval/mean_reward", "--reps", "200",
                        "--skip-incomplete"], capsys)
    report = (tmp_path / "b" / "report.md").read_text()
    assert code == 0 and "2 runs" in report and "Left out" in report and "Toy-v0 / ppo / seed 2" in report
    assert "| ppo | 2 | 5.50" in (tmp_path / "b" / "Toy-v0.md").read_text()


def test_unidentifiable_run(tmp_path):
    write_run(tmp_path / "just" / "a" / "folder", [0], [1.0])
    with pytest.raises(CompareError, match="cannot tell"):
        load_runs(tmp_path)


def test_module_subprocess(logdir, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    out = tmp_path / "cli"
    proc = subprocess.run(
        [sys.executable, "-m", "rlgeom.compare", str(logdir), "--out", str(out), "--threshold", "Toy-v0=5",
         "--ci", "t", "--reps", "200", "--return-range", "Toy-v0=0:10"],
        capture_output=True, text=True, env=env, cwd=REPO, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert (out / "report.md").is_file() and (out / "CartPole-v1_return_vs_steps.png").stat().st_size > 0


def test_set_aside_and_failed_runs_are_not_seeds(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    from rlgeom.persistence.runlogs import find_run_dirs

    for name in ("T-v0/ppo/seed0", "T-v0/ppo/seed1.incomplete-20260101-000000", "T-v0/ppo/seed2"):
        with SummaryWriter(str(tmp_path / name)) as w:
            w.add_scalar("rollout/ep_rew_mean", 1.0, 1)
    (tmp_path / "T-v0/ppo/seed2/error.log").write_text("Traceback ...")
    assert [p.name for p in find_run_dirs(tmp_path)] == ["seed0"]


def test_grid_summary_table(tmp_path, capsys):
    """experiments/grid_1m_table.py (the README's 1M table) from done.json files: mean and IQM per cell,
    P(rlgeom run > peer run) against a plain count over the pairs, unfinished runs left out."""
    import importlib.util

    path = REPO / "experiments" / "grid_1m_table.py"
    spec = importlib.util.spec_from_file_location("grid_1m_table", path)
    table = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(table)
    trpo, peer = [100.0, 400.0, 300.0, 200.0, 1000.0], [250.0, 350.0, 50.0]  # no ties: scipy's exact p
    for agent, returns in (("trpo", trpo), ("sb3contrib-trpo", peer)):
        for seed, value in enumerate(returns):
            run = tmp_path / "Hopper-v5" / agent / f"seed{seed}"
            run.mkdir(parents=True)
            (run / "done.json").write_text(json.dumps({"status": "done", "seed": seed, "eval_return": value,
                                                       "wall_s": 10.0, "fps": 100.0}))
            (run / "events.out.tfevents.0.test").write_bytes(b"")  # a run directory, as rlgeom.compare finds them
    unfinished = tmp_path / "Hopper-v5" / "trpo" / "seed5"  # an unfinished run: no done.json
    unfinished.mkdir()
    (unfinished / "events.out.tfevents.0.test").write_bytes(b"")
    aside = tmp_path / "Hopper-v5" / "trpo" / "seed0.incomplete-20261203-000000"  # set aside, even with a done.json
    aside.mkdir()
    (aside / "events.out.tfevents.0.test").write_bytes(b"")
    (aside / "done.json").write_text(json.dumps({"status": "done", "seed": 0, "eval_return": 1e6, "wall_s": 1.0,
                                                 "fps": 1.0}))
    assert table.main([str(tmp_path)]) == 0
    out = capsys.readouterr().out
    # mean 400; IQM drops one run from each end of five: (200 + 300 + 400) / 3 = 300
    assert "| rlgeom TRPO | 400 / 300 (5) | — | — |" in out
    wins = sum((x > y) + 0.5 * (x == y) for x in trpo for y in peer) / (len(trpo) * len(peer))
    # p: the exact two-sided permutation test, over every way of splitting the pooled returns into 5 and 3
    pooled, pairs = trpo + peer, len(trpo) * len(peer)
    u, centre = wins * pairs, pairs / 2
    splits = [sum(pooled[i] > pooled[j] for i in chosen for j in range(len(pooled)) if j not in chosen)
              for chosen in itertools.combinations(range(len(pooled)), len(trpo))]
    p = np.mean([abs(s - centre) >= abs(u - centre) for s in splits])
    assert f"| rlgeom TRPO | sb3-contrib TRPO | {wins:.2f} (5×3, p {p:.2f}) | — | — |" in out
    # the difference of means, +183 of the peer's 217: its bootstrap interval lies within what resampling can
    # reach (every x seed against every y seed) and, with 3 and 5 seeds this spread, includes 0
    diff, (low, high) = table.mean_difference(np.array(trpo), np.array(peer))
    assert diff == pytest.approx(400 - 650 / 3)
    assert min(trpo) - max(peer) <= low < diff < high <= max(trpo) - min(peer) and low < 0
    gap = table.excluded_gap((low, high), 650 / 3)
    assert f"| rlgeom TRPO | sb3-contrib TRPO | +183 (+85%) [{low:+.0f}, {high:+.0f}]; no difference detected, " \
           f"gaps > {gap:.0%} excluded | — | — |" in out
    # one value per side: the interval is the difference itself, and it excludes 0
    assert table.difference_cell(np.full(3, 5.0), np.full(4, 4.0)) == "+1 (+25%) [+1, +1]; higher by +25% to +25%"
    with pytest.raises(SystemExit) as exit_:
        table.main([str(tmp_path / "missing")])
    assert exit_.value.code == 2


def test_a_seed_is_counted_once_and_its_repeat_named(tmp_path):
    """seed0 and seed0_2 (a rerun of seed 0) are one seed, the rerun named and left out; a continuation in a
    folder of its own (seed 1 resumed at step 600) is merged into seed 1's curve. Two seeds, with the warning
    that two are too few for an interval."""
    s = np.arange(0, 501, 100)
    meta = {"env_id": "T-v0", "algo": "ppo"}
    write_run(tmp_path / "T-v0" / "ppo" / "seed0", s, s / 100.0, meta={**meta, "seed": 0}, wall=1000.0 + s)
    write_run(tmp_path / "T-v0" / "ppo" / "seed0_2", s, s / 10.0, meta={**meta, "seed": 0}, wall=5000.0 + s)
    write_run(tmp_path / "T-v0" / "ppo" / "seed1", s, s / 100.0 + 1, meta={**meta, "seed": 1}, wall=1000.0 + s)
    later = np.arange(600, 1001, 100)
    write_run(tmp_path / "T-v0" / "ppo" / "seed1_resumed", later, later / 100.0 + 1, meta={**meta, "seed": 1},
              wall=3000.0 + later)
    row = summarize(load_runs(tmp_path), reps=200)["T-v0"][0]
    assert row.seeds == 2
    assert row.budget == 1000  # seed 1's merged curve runs to the continuation's end
    from rlgeom.persistence.runlogs import Curve
    from rlgeom.tools.compare import final_return

    steps = np.arange(0, 1001, 100)
    seed0 = final_return(Curve(s.astype(float), s / 100.0, 1000.0 + s))  # seed0's own curve, not its rerun's
    seed1 = final_return(Curve(steps.astype(float), steps / 100.0 + 1, steps.astype(float)))  # 0..1000, merged
    assert row.final_mean == pytest.approx((seed0 + seed1) / 2)
    notes = " ".join(row.notes)
    assert "seed 0 ran more than once" in notes and "seed0_2" in notes
    assert "seed 1: 2 runs continue one another" in notes
    assert "only 2 seeds" in notes
    report = (tmp_path / "out" / "report.md")
    write_report(tmp_path, tmp_path / "out", reps=200)
    text = report.read_text()
    assert "seed0_2" in text and "4 runs (2 once each seed is counted once)" in text


def test_plot_ranges_show_where_the_data_lie():
    """The probability-of-improvement bar of P = 1.0 [1, 1] is drawn 0.02 wide inside [0, 1]; wide intervals
    are drawn as they are. The performance profiles' τ run over the scores' range (to 0.32 when that is the
    best score), not to a fixed 1.2."""
    from rlgeom.tools.compare import profile_taus, visible_interval

    assert visible_interval((1.0, 1.0)) == pytest.approx((0.98, 1.0))
    assert visible_interval((0.0, 0.0)) == pytest.approx((0.0, 0.02))
    assert visible_interval((0.5, 0.5)) == pytest.approx((0.49, 0.51))
    assert visible_interval((0.2, 0.7)) == (0.2, 0.7)
    taus = profile_taus({"a": np.array([[0.1, 0.32]]), "b": np.array([[0.05, 0.2]])})
    assert taus[0] == 0.0 and taus[-1] == pytest.approx(0.32)
    assert profile_taus({"a": np.array([[-0.5, 0.3]])})[0] == pytest.approx(-0.5)
