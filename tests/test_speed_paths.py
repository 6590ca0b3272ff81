"""The fast paths: the rollout's inference forward, no host sync per step, lazy imports, CUDA (skipped
without a GPU)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents import PPO
from rlgeom.data.buffer import RolloutBuffer
from rlgeom.models.policies import ActorCriticPolicy

CUDA = torch.cuda.is_available()


def _policy(obs_dim, action_space, **kw):
    return ActorCriticPolicy(spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32), action_space, **kw)


def _policy_and_batch(action_space, kw):
    """A seeded policy over 5-D observations with fitted normalisation statistics, and a batch of 32."""
    torch.manual_seed(0)
    policy = _policy(5, action_space, ortho_init=False, **kw)
    policy.obs_normalizer.update(torch.randn(64, 5) * 3 + 1)
    return policy, torch.randn(32, 5)


@pytest.mark.parametrize(
    "action_space, kw",
    [
        (spaces.Discrete(3), {}),
        (spaces.Box(-1, 1, (2,), np.float32), {}),
        (spaces.Box(-1, 1, (2,), np.float32), {"net_arch": {"pi": [32], "vf": [16, 16]}}),  # not fusable
        (spaces.Discrete(2), {"activation_fn": "elu", "normalize_observations": True}),
        (spaces.MultiDiscrete([2, 3]), {"net_arch": [8]}),
    ],
)
def test_act_matches_the_distribution(action_space, kw):
    """act()'s values and log-probabilities are the autograd path's, for the actions it drew."""
    policy, obs = _policy_and_batch(action_space, kw)
    actions, values, log_probs = policy.act(obs)
    with torch.no_grad():
        dist = policy.get_distribution(obs)
        torch.testing.assert_close(log_probs, dist.log_prob(actions), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(values, policy.value(obs), rtol=1e-5, atol=1e-5)
        mode, _, _ = policy.act(obs, deterministic=True)
        torch.testing.assert_close(mode, dist.mode())
    # fused Adam moves parameters without bumping tensor versions: act() must read the live parameters
    opt = torch.optim.Adam(policy.parameters(), lr=0.1, fused=True)
    policy.value(obs).sum().backward()
    opt.step()
    _, values2, _ = policy.act(obs)
    with torch.no_grad():
        torch.testing.assert_close(values2, policy.value(obs), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "action_space, kw",
    [
        (spaces.Discrete(3), {}),
        (spaces.Box(-1, 1, (2,), np.float32), {"normalize_observations": True}),
        (spaces.MultiDiscrete([2, 3]), {"net_arch": {"pi": [8], "vf": [4, 4]}, "activation_fn": "elu"}),
    ],
)
@pytest.mark.parametrize("written_out", [True, False], ids=["written_out", "autograd"])
def test_outputs_match_the_modules_and_their_gradients(action_space, kw, written_out):
    """policy.outputs (the update's one evaluation) and its backward equal the modules and autograd."""
    policy, obs = _policy_and_batch(action_space, kw)
    policy.written_out_derivatives = written_out
    actions = policy.act(obs)[0].clone()
    family, params = policy.family, list(policy.parameters())

    def loss(dist_params, values):
        return ((family.log_prob(dist_params, actions) * obs[:, 0]).mean() - 0.1 * family.entropy(dist_params).mean()
                + values.square().mean())

    out = policy.outputs(obs)
    x = policy.actor_inputs(obs)
    reference = (policy.actor(x), policy.critic(x).squeeze(-1))  # the modules
    torch.testing.assert_close(out.dist_params, reference[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.values, reference[1], rtol=1e-5, atol=1e-6)
    theirs = torch.autograd.grad(loss(*reference), params, allow_unused=True)
    out.backward(loss(out.dist_params, out.values))
    for p, h in zip(params, theirs):
        assert (p.grad is None) == (h is None)
        if h is not None:
            torch.testing.assert_close(p.grad, h, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("env_id, kw", [
    ("Pendulum-v1", {}),
    ("Pendulum-v1", {"use_sde": True, "sde_sample_freq": 3, "normalize_observations": True}),
    ("CartPole-v1", {"policy_kwargs": {"net_arch": {"pi": [16], "vf": [8, 8]}}}),
])
def test_the_rollouts_old_log_probs_and_values_are_the_policys(env_id, kw):
    """log π_old and V_old, evaluated once after the rollout, are the policy's torch distribution's
    log-density of each stored action and its critic's value of each stored observation."""
    model = PPO("MlpPolicy", env_id, n_envs=2, n_steps=16, batch_size=32, seed=0, device="cpu", **kw)
    model.learn(32)  # one rollout and one update (normalisation statistics fitted), then a second rollout
    model.collect_rollout()
    buf = model.buffer
    obs, actions = buf.obs.flatten(0, 1), buf.actions.flatten(0, 1)
    with torch.no_grad():
        log_probs = model.policy.get_distribution(obs).log_prob(actions)
        values = model.policy.value(obs)
    torch.testing.assert_close(buf.log_probs.flatten(), log_probs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(buf.values.flatten(), values, rtol=1e-5, atol=1e-5)
    assert buf.log_probs.abs().sum() > 0 and buf.values.abs().sum() > 0


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])  # float32 and float64 observations
def test_stored_observations_are_not_overwritten_by_later_steps(env_id):
    """Vector envs built from an id return their own observation buffer (copy=False): every stored
    observation must still be the one of its step, next_obs[t] == obs[t+1] wherever the episode went on."""
    model = PPO("MlpPolicy", env_id, n_envs=2, n_steps=64, batch_size=128, seed=0, device="cpu")
    model.learn(128)
    buf = model.buffer
    going_on = ~buf.dones[:-1]
    assert going_on.any() and not torch.equal(buf.obs[0], buf.obs[-1])
    assert torch.equal(buf.next_obs[:-1][going_on], buf.obs[1:][going_on])
    assert torch.equal(buf.next_obs[-1][~buf.dones[-1]], model._last_obs[~buf.dones[-1]])
    assert len({tuple(row.tolist()) for row in buf.obs.flatten(0, 1)}) == buf.obs.shape[0] * buf.obs.shape[1]


def test_fast_sampling_has_the_right_distribution():
    torch.manual_seed(1)
    policy = _policy(3, spaces.Discrete(3), ortho_init=False)
    obs = torch.zeros(20000, 3)
    actions, _, _ = policy.act(obs)
    with torch.no_grad():
        probs = policy.get_distribution(obs[:1]).probs[0]
    freq = torch.bincount(actions, minlength=3).float() / len(actions)
    assert torch.allclose(freq, probs, atol=0.015)
    gauss = _policy(3, spaces.Box(-1, 1, (1,), np.float32), log_std_init=-0.5)
    a, _, _ = gauss.act(obs)
    assert abs(a.std().item() - np.exp(-0.5)) < 0.02


class _HostSync(AssertionError):
    pass


def test_no_host_sync_per_step_on_torch_native(monkeypatch):
    """Inside collect_rollout's per-step loop nothing reads a tensor back to the host.

    On CPU a host read cannot be observed as a device sync, so the host-reading tensor methods
    (item, tolist, cpu, numpy, bool/int/float conversion) are made to raise from the start of each
    rollout until the rollout asks for its finished episodes (the one allowed read per rollout).
    """
    armed = {"on": False, "rollouts": 0}

    def guard(name, original):
        def wrapped(self, *args, **kwargs):
            if armed["on"]:
                raise _HostSync(f"Tensor.{name} called inside the per-step loop")
            return original(self, *args, **kwargs)
        return wrapped

    for name in ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, guard(name, getattr(torch.Tensor, name)))
    original_collect = PPO.collect_rollout
    original_finished = RolloutBuffer.finished_episodes

    def collect(self, callback=None):
        armed["on"], armed["rollouts"] = True, armed["rollouts"] + 1
        try:
            return original_collect(self, callback)
        finally:
            armed["on"] = False

    def finished(self):
        armed["on"] = False  # the end of the per-step section
        return original_finished(self)

    monkeypatch.setattr(PPO, "collect_rollout", collect)
    monkeypatch.setattr(RolloutBuffer, "finished_episodes", finished)
    model = PPO("MlpPolicy", "torch/CartPole-v1", n_envs=256, n_steps=16, batch_size=1024, n_epochs=2,
                seed=0, device="cpu")
    model.learn(256 * 16 * 3)
    assert armed["rollouts"] == 3 and model.num_timesteps == 256 * 16 * 3


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("env_id,n_envs", [("torch/CartPole-v1", 1024), ("CartPole-v1", 8)])
def test_no_sync_per_step_on_cuda(env_id, n_envs):
    """A torch-native env never waits; a host (Gymnasium) env's step sends its observations up in one pinned
    non-blocking copy and brings the actions down through a pinned buffer and one explicit stream sync
    (envs.device), which the sync debug mode does not flag: nothing else may synchronise."""
    model = PPO("MlpPolicy", env_id, n_envs=n_envs, n_steps=16, batch_size=4096 if n_envs > 8 else 64, n_epochs=2,
                seed=0, device="cuda")
    model.learn(n_envs * 16)  # warm-up: allocations, pinned buffers, cuBLAS handles
    model.buffer.reset()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(model.config.n_steps):
            actions = model.policy.draw(model._last_obs)
            step = model.env.step(model._env_actions(actions))
            model.buffer.add(model._last_obs, actions, model._last_episode_starts, step)
            model._last_obs, model._last_episode_starts = step.obs, step.done
    finally:
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_ppo_learns_on_cuda_torch_native():
    model = PPO("MlpPolicy", "torch/CartPole-v1", n_envs=1024, n_steps=32, batch_size=8192, n_epochs=4,
                learning_rate=1e-3, seed=0, device="cuda")
    model.learn(1024 * 32 * 10)
    assert np.mean([e["r"] for e in model.ep_info_buffer]) > 60


def test_ppo_learns_on_torch_native_cpu():
    """A short PPO run on the batched torch CartPole gets well above a random policy's ~22."""
    model = PPO("MlpPolicy", "torch/CartPole-v1", n_envs=64, n_steps=32, batch_size=512, n_epochs=4,
                learning_rate=3e-3, gae_lambda=0.8, gamma=0.98, seed=0, device="cpu")
    model.learn(64 * 32 * 12)  # seeds 0 and 1 reach ~84 (the last 100 episodes, biased to short ones)
    returns = [e["r"] for e in model.ep_info_buffer]
    assert len(returns) > 50 and np.mean(returns) > 50, np.mean(returns)


def test_import_agents_stays_light():
    code = (
        "import sys, agents; "
        "bad = [m for m in ('stable_baselines3', 'sb3_contrib', 'tensorboard', 'torch.utils.tensorboard', "
        "'matplotlib', 'scipy', 'pandas') if m in sys.modules]; print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "", f"import agents pulled in: {out.stdout.strip()}"


def test_gpu_benchmark_script_runs_on_the_cpu(tmp_path):
    """experiments/bench_gpu.py (issue 7's GPU figures, one command) keeps working where no GPU is: a
    tiny throughput section on the CPU, and a clear refusal of --device cuda without CUDA."""
    import importlib.util
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "experiments" / "bench_gpu.py"
    spec = importlib.util.spec_from_file_location("bench_gpu", path)
    bench_gpu = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench_gpu)
    out = tmp_path / "gpu.json"
    threads = torch.get_num_threads()
    try:
        assert bench_gpu.main(["--device", "cpu", "--n-envs", "32", "--sections", "throughput", "--algos", "ppo",
                               "acktr", "--throughput-updates", "1", "--out", str(out)]) == 0
    finally:
        torch.set_num_threads(threads)  # main() sets the thread count for the whole process
    rows = json.loads(out.read_text())["throughput"]
    assert [r["algo"] for r in rows] == ["ppo", "acktr"] and all(r["steps_per_s"] > 0 for r in rows)
    if not CUDA:
        assert bench_gpu.main(["--device", "cuda"]) == 2
