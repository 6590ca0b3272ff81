"""rlgeom.tools.landscape on tiny CartPole models built (not trained) and saved in the test.

Grid centres and interpolation endpoints are checked against each model's own objective computed
independently: the surrogate on the same fixed batch, and rlgeom.training.evaluation.evaluate with the
same seed.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from agents import PPO
from envs import make_vec_env
from rlgeom.training.evaluation import evaluate
from rlgeom.tools.landscape import (
    LandscapeError,
    barrier_height,
    collect_batch,
    compute_landscape,
    linear_barrier_height,
    load_agent,
    main,
    random_plane,
    return_grid,
)

SMALL = dict(points=5, return_points=3, batch_states=64, eval_episodes=2, progress=False, seed=3)


def make_model(path, seed: int, net_arch=(8,), perturb: float = 0.0, steps: int = 0) -> str:
    agent = PPO("MlpPolicy", "CartPole-v1", seed=seed, n_steps=32, batch_size=32,
                policy_kwargs=dict(net_arch=list(net_arch)))
    if perturb:
        gen = torch.Generator().manual_seed(1000 + steps)
        with torch.no_grad():
            for p in agent.policy.actor.parameters():
                p.add_(perturb * torch.randn(p.shape, generator=gen).to(p.device))  # drawn on the CPU: same noise anywhere
    agent.num_timesteps = steps
    path = agent.save(path)
    agent.env.close()
    return path


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("landscape")
    out = {"root": str(root), "a": make_model(root / "a", seed=0), "b": make_model(root / "b", seed=1, perturb=0.5),
           "wide": make_model(root / "wide", seed=0, net_arch=(16,))}
    ckpt = root / "run"
    out["checkpoints"] = [make_model(ckpt / f"step{s}", seed=0, perturb=0.3 * s, steps=s * 32) for s in (1, 2, 3)]
    out["other_run"] = make_model(root / "other_run" / "step32", seed=1, perturb=0.3, steps=32)
    return out


def own_objectives(path: str, batch_from: str, seed: int, episodes: int):
    """(surrogate of `path` on the batch `batch_from` collects, its evaluated mean return)."""
    collector, _ = load_agent(batch_from)
    batch = collect_batch(collector, "CartPole-v1", SMALL["batch_states"], seed)
    agent, _ = load_agent(path)
    env = make_vec_env("CartPole-v1", 1)
    mean, _ = evaluate(agent, env, episodes, deterministic=True, seed=seed)
    env.close()
    return batch.surrogate(agent.policy), mean


@pytest.mark.parametrize("kind,dims", [("random", 1), ("fisher", 2)])
def test_grid_shapes_and_centre_is_the_models_objective(models, kind, dims):
    land = compute_landscape(kind, models["a"], dims=dims, **SMALL)
    assert land.surrogate.shape == (5,) * dims and land.returns.shape == (3,) * dims
    assert all(len(a) == 5 for a in land.axes) and all(a[2] == 0.0 for a in land.axes)
    surrogate, ret = own_objectives(models["a"], models["a"], SMALL["seed"], SMALL["eval_episodes"])
    assert land.surrogate[(2,) * dims] == surrogate
    assert land.returns[(1,) * dims] == ret == land.meta["return_at_model"]
    assert np.isfinite(land.surrogate).all() and np.isfinite(land.returns).all()
    assert not np.all(land.surrogate == surrogate)  # the directions do move the policy


def test_pca_projects_the_trajectory(models):
    land = compute_landscape("pca", models["checkpoints"][-1], checkpoints=[os.path.dirname(models["checkpoints"][0])],
                             dims=2, returns=False, **{k: v for k, v in SMALL.items()})
    assert land.trajectory.shape == (2, 2)  # the two earlier checkpoints; the model itself is the origin
    assert land.returns is None and land.surrogate.shape == (5, 5)
    for d in range(2):  # the grid spans the projected trajectory
        assert np.abs(land.trajectory[:, d]).max() < land.axes[d][-1]
    ratios = land.meta["explained_variance_ratio"]
    assert len(ratios) == 2 and ratios[0] >= ratios[1] > 0


def test_interpolation_endpoints_are_each_models_objective(models):
    land = compute_landscape("interpolate", models["a"], other=models["b"], **SMALL)
    assert land.axes[0][0] == 0.0 and land.axes[0][-1] == 1.0
    for index, path in ((0, models["a"]), (-1, models["b"])):
        surrogate, ret = own_objectives(path, models["a"], SMALL["seed"], SMALL["eval_episodes"])
        assert land.surrogate[index] == pytest.approx(surrogate, abs=1e-6)
        assert land.returns[index] == ret
    assert land.meta["return_barrier"] == barrier_height(land.returns)


def test_barrier_heights():
    alphas = np.linspace(0, 1, 5)
    assert barrier_height(np.array([10.0, 4.0, 2.0, 6.0, 10.0])) == 8.0
    assert linear_barrier_height(alphas, np.array([0.0, 1.0, 2.0, 3.0, 4.0])) == 0.0
    assert barrier_height(np.array([0.0, 1.0, 2.0, 3.0, 4.0])) == 2.0  # unequal endpoints alone
    assert linear_barrier_height(alphas, np.array([0.0, 1.0, -2.0, 3.0, 4.0])) == 4.0


def test_architecture_mismatch_is_an_error(models, capsys):
    with pytest.raises(LandscapeError, match="different architectures.*actor.body.0.weight"):
        compute_landscape("interpolate", models["a"], other=models["wide"], **SMALL)
    assert main(["interpolate", models["a"], models["wide"], "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "different architectures" in err and "Traceback" not in err


def test_checkpoints_of_another_run_are_an_error(models):
    with pytest.raises(LandscapeError, match=r"not from the same run .*seed 1 vs 0"):
        compute_landscape("pca", models["checkpoints"][-1],
                          checkpoints=models["checkpoints"][:2] + [models["other_run"]], **SMALL)


def test_time_budget_refuses_with_the_estimate(models, capsys):
    code = main(["random", models["a"], "--points", "5", "--return-points", "5", "--time-budget", "1e-6",
                 "--batch-states", "64", "--workers", "1", "--no-progress", "--out", models["root"] + "/never"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: the random grid would take about")
    assert "25 return points ×" in err and "--time-budget 1e-06 s" in err and "Traceback" not in err
    assert not os.path.exists(models["root"] + "/never")


def test_cli_writes_png_npz_and_json(models, tmp_path, capsys):
    out = str(tmp_path / "plots")
    code = main(["random", models["a"], "--dims", "2", "--points", "3", "--return-points", "3", "--workers", "2",
                 "--eval-episodes", "1", "--batch-states", "64", "--no-progress", "--out", out])
    assert code == 0, capsys.readouterr().err
    for ext in ("png", "npz", "json"):
        assert os.path.getsize(os.path.join(out, f"random_2d.{ext}")) > 0
    with np.load(os.path.join(out, "random_2d.npz")) as grids:
        assert grids["surrogate"].shape == (3, 3) and grids["returns"].shape == (3, 3)
        assert np.isfinite(grids["returns"]).all()
    with open(os.path.join(out, "random_2d.json")) as f:
        record = json.load(f)
    assert record["kind"] == "random" and np.asarray(record["returns"]).shape == (3, 3)
    assert main(["sharpness", models["a"], "--directions", "3", "--batch-states", "64", "-k", "2", "--out", out]) == 0
    with open(os.path.join(out, "sharpness.json")) as f:
        sharp = json.load(f)
    assert len(sharp["fisher_top_eigenvalues"]) == 2 and sharp["mean_kl"]["min"] >= 0
    with open(os.path.join(out, "sharpness.png"), "rb") as f:  # the distribution of the changes, as promised
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_return_grid_in_worker_processes_equals_in_process(models):
    agent, _ = load_agent(models["a"])
    plane = random_plane(agent, 2, seed=0)
    axes = [np.linspace(-0.5, 0.5, 3)] * 2
    serial = return_grid(models["a"], "CartPole-v1", plane, axes, 1, 0, workers=1, progress=False)
    parallel = return_grid(models["a"], "CartPole-v1", plane, axes, 1, 0, workers=2, progress=False)
    np.testing.assert_array_equal(parallel, serial)
    assert np.isfinite(serial).all()


def test_plots_name_the_run_label_colorbars_and_explain_their_marks(models):
    from rlgeom.tools.landscape import SURROGATE_LABEL, run_label

    label = run_label(os.path.join("runs", "CartPole-v1", "ppo", "seed0", "model.safetensors"),
                      {"algo": "ppo", "env_id": "CartPole-v1", "seed": 0, "num_timesteps": 128})
    assert label == "PPO on CartPole-v1, seed 0, 128 steps (CartPole-v1/ppo/seed0)"
    result = compute_landscape("pca", models["checkpoints"][-1], checkpoints=models["checkpoints"][:-1], dims=2,
                               returns=False, **{k: v for k, v in SMALL.items() if k not in ("return_points", "eval_episodes")})
    assert result.meta["title"].startswith("pca landscape of PPO on CartPole-v1, seed 0, 96 steps")
    fig = result.figure()
    main_ax, colorbar_ax = fig.axes[0], fig.axes[1]
    assert colorbar_ax.get_ylabel() == "surrogate L(θ)" and main_ax.get_title() == SURROGATE_LABEL
    legend = [t.get_text() for t in main_ax.get_legend().get_texts()]
    assert legend == ["training trajectory (checkpoints)", "start (first checkpoint)", "θ*: the saved model"]
    start = [line for line in main_ax.get_lines() if line.get_label() == "start (first checkpoint)"][0]
    np.testing.assert_allclose(np.ravel(start.get_xydata()), result.trajectory[0])  # the oldest checkpoint
    # a return that is the same everywhere (CartPole's 500, say): its value on the bar, no "1e−11+5e2" offset
    result.returns, result.return_axes = np.full_like(result.surrogate, 500.0), result.axes
    fig = result.figure()
    fig.canvas.draw()
    bars = [ax for ax in fig.axes if ax.get_ylabel().startswith(("surrogate", "mean return"))]
    assert bars[-1].get_ylabel().endswith("(constant: 500)")
    assert all(ax.yaxis.get_offset_text().get_text() == "" for ax in bars)


def test_interpolation_prints_the_barrier_with_its_definition(models, tmp_path, capsys):
    code = main(["interpolate", models["a"], models["b"], "--points", "3", "--no-return", "--batch-states", "64",
                 "--no-progress", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert code == 0 and "surrogate barrier" in out
    assert "barrier = mean of the two endpoints' values − the lowest value along the path" in out
