"""ACKTR: the K-FAC-preconditioned, KL-clipped actor-critic step (agents/acktr.py)."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

from agents import ACKTR, AGENTS
from rlgeom.geometry.fisher import kl_scale


class TinyImageEnv(gym.Env):
    """uint8 [4, 36, 36] frames (the Nature CNN shrinks them to 1×1×64, so K-FAC factors stay small), 3 actions; reward 1 for action 0, episodes of 8 steps."""

    observation_space = spaces.Box(0, 255, (4, 36, 36), np.uint8)
    action_space = spaces.Discrete(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self.np_random.integers(0, 256, (4, 36, 36), dtype=np.uint8), {}

    def step(self, action):
        self.t += 1
        obs = self.np_random.integers(0, 256, (4, 36, 36), dtype=np.uint8)
        return obs, float(action == 0), False, self.t >= 8, {}


class BrightQuadrantEnv(gym.Env):
    """uint8 [4, 36, 36] noise frames with one bright quadrant; reward 1 for the action naming that quadrant,
    episodes of 8 steps: random play scores 2 per episode, a policy that reads the image scores 8."""

    observation_space = spaces.Box(0, 255, (4, 36, 36), np.uint8)
    action_space = spaces.Discrete(4)

    def _frame(self):
        self.target = int(self.np_random.integers(4))
        frame = self.np_random.integers(0, 60, (4, 36, 36), dtype=np.uint8)
        row, col = divmod(self.target, 2)
        frame[:, row * 18:(row + 1) * 18, col * 18:(col + 1) * 18] += 150
        return frame

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return self._frame(), {}

    def step(self, action):
        reward = float(int(action) == self.target)
        self.t += 1
        return self._frame(), reward, False, self.t >= 8, {}


def params_of(agent) -> list[torch.Tensor]:
    return [p.detach().clone() for p in agent.policy.parameters()]


def one_update(agent):
    """Collect one rollout and run one update, as learn() does (without the logger)."""
    agent._reset_env()
    agent.collect_rollout()
    before = params_of(agent)
    stats = agent.update(agent.buffer, 1.0)
    return before, stats


def applied_step_quadratic(agent, before, group: str = "all") -> float:
    """ΔᵀF̂Δ of the step actually applied, by the preconditioner's own quadratic form, plus the
    Gaussian scale's exact block (2·Δ² for log σ) when the policy has one; over all parameters, or
    only the actor's or the critic's (`group`)."""
    params = list(agent.policy.parameters())
    members = {"all": params, "actor": agent.policy.actor_parameters(), "critic": agent.policy.critic_parameters()}
    keep = {id(p) for p in members[group]}
    deltas = {p: p.detach() - b for p, b in zip(params, before) if id(p) in keep}
    q = float(agent.kfac.fisher_quadratic_form(deltas))
    scale = agent.policy.actor.scale
    if scale is not None and id(scale.raw) in keep:
        q += float((2.0 * deltas[scale.raw].pow(2)).sum())
    return q


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("trust_region", ["joint", "per_network"])
def test_step_respects_the_kl_budget(env_id, trust_region):
    """With momentum 0 the applied step is η·Δ. joint: its K-FAC quadratic form over all parameters
    is ≤ 2·kl_clip (= when η < 1); per_network: the actor's and the critic's each are."""
    kl_clip = 1e-3
    agent = ACKTR("MlpPolicy", env_id, n_envs=2, n_steps=16, seed=0, device="cpu", momentum=0.0,
                  learning_rate=0.25, kl_clip=kl_clip, update_inverse_every=1, trust_region=trust_region)
    before, stats = one_update(agent)
    changed = sum(float((p.detach() - b).abs().sum()) for p, b in zip(agent.policy.parameters(), before))
    assert changed > 0
    q = applied_step_quadratic(agent, before, "all" if trust_region == "joint" else "actor")
    assert q <= 2 * kl_clip * (1 + 1e-4)
    if trust_region == "per_network":
        q_critic = applied_step_quadratic(agent, before, "critic")
        assert q_critic <= 2 * kl_clip * (1 + 1e-4)
        assert q_critic == pytest.approx(
            stats["geometry/eta_critic"] ** 2 * stats["geometry/quadratic_form_critic"], rel=1e-3)
    else:
        assert "geometry/eta_critic" not in stats
    eta = stats["geometry/eta"]
    assert 0 < eta <= 1
    if eta < 1:  # the trust region binds: the step sits on its boundary, ½ΔᵀF̂Δ = kl_clip
        assert q == pytest.approx(2 * kl_clip, rel=1e-3)
        assert stats["geometry/trust_region_bound"] == 1.0
    assert stats["geometry/kl_predicted"] == pytest.approx(0.5 * q, rel=1e-3)
    for tag in ("train/policy_gradient_loss", "train/value_loss", "train/entropy_loss", "train/learning_rate",
                "train/explained_variance", "geometry/kfac_damping", "geometry/kfac_max_condition",
                "geometry/kfac_inverse_seconds", "geometry/trust_region_bound_fraction", "geometry/kl"):
        assert tag in stats


def test_per_network_trust_region_needs_separate_networks():
    with pytest.raises(ValueError, match="per_network.*shares its feature extractor"):
        ACKTR("CnnPolicy", TinyImageEnv(), n_steps=8, seed=0, device="cpu", trust_region="per_network")
    with pytest.raises(ValueError, match="trust_region must be one of joint, per_network"):
        ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, seed=0, device="cpu", trust_region="separate")


def test_eta_is_one_when_the_raw_step_is_small():
    """A tiny learning rate puts the raw step deep inside the trust region: η = 1 and the step is
    exactly -lr (F̂ + λI)⁻¹ g (checked through its quadratic form, lr² times that of the direction)."""
    agent = ACKTR("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=16, seed=1, device="cpu", momentum=0.0,
                  learning_rate=1e-6, kl_clip=1e-3)
    before, stats = one_update(agent)
    assert stats["geometry/eta"] == 1.0
    assert stats["geometry/trust_region_bound"] == 0.0
    q = applied_step_quadratic(agent, before)
    assert q == pytest.approx(stats["geometry/quadratic_form"], rel=1e-3)
    assert 0 < q < 2e-3
    assert float(kl_scale(torch.tensor(q), 1e-3, clip=True)) == 1.0


def test_momentum_averages_the_clipped_steps():
    """SGD's step size is lr·(1 − m) (baselines): the first update, with an empty momentum buffer,
    moves θ by (1 − m)·η·Δ, so its quadratic form is (1 − m)²·η²·ΔᵀF̂Δ, not η²·ΔᵀF̂Δ."""
    m = 0.9
    agent = ACKTR("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=16, seed=0, device="cpu", momentum=m,
                  learning_rate=0.25, kl_clip=1e-3, update_inverse_every=1)
    before, stats = one_update(agent)
    q = applied_step_quadratic(agent, before)
    expected = (1 - m) ** 2 * stats["geometry/eta"] ** 2 * stats["geometry/quadratic_form"]
    assert q == pytest.approx(expected, rel=1e-3)
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(0.25 * (1 - m))


def test_cnn_policy_update_on_images():
    agent = ACKTR("CnnPolicy", TinyImageEnv(), n_steps=8, seed=0, device="cpu", momentum=0.0)
    assert agent.policy.share_features_extractor
    assert "actor.features.convs.0" in agent.kfac.layer_names
    obs = torch.as_tensor(np.random.default_rng(0).integers(0, 256, (5, 4, 36, 36), dtype=np.uint8))
    out = agent.policy.outputs(obs)  # one call of the shared torso, same outputs as the separate calls
    params, values = out.dist_params, out.values
    torch.testing.assert_close(params, agent.policy.dist_params(obs))
    torch.testing.assert_close(values, agent.policy.value(obs))
    before, stats = one_update(agent)
    moved = [not torch.equal(p.detach(), b) for p, b in zip(agent.policy.parameters(), before)]
    assert all(moved)  # conv torso, actor and critic heads
    assert applied_step_quadratic(agent, before) <= 2 * agent.config.kl_clip * (1 + 1e-4)  # one joint budget
    assert all(math.isfinite(v) for v in stats.values())


class TrackedACKTR(ACKTR):
    """Records the return of every finished training episode, in order."""

    def collect_rollout(self, callback=None):
        ok = super().collect_rollout(callback)
        self.episode_returns = getattr(self, "episode_returns", []) + self.buffer.finished_episodes()[0]
        return ok


def test_acktr_improves_cartpole():
    """CartPole-v1's preset, fixed seed, 30k steps: the last 20 training episodes average well above
    the first 20 (random play: ~20). Margin: at least twice as long and 50 steps longer."""
    from agents.presets import preset

    cfg = preset("acktr", "CartPole-v1")
    agent = TrackedACKTR("MlpPolicy", "CartPole-v1", n_envs=cfg["n_envs"], seed=0, device="cpu",
                         **cfg["hyperparameters"])
    agent.learn(30_000)
    returns = agent.episode_returns
    assert len(returns) >= 40
    early, late = float(np.mean(returns[:20])), float(np.mean(returns[-20:]))
    assert late > max(2 * early, early + 50), (early, late)


def test_save_load_identical_predictions(tmp_path):
    agent = ACKTR("MlpPolicy", "Pendulum-v1", n_envs=2, n_steps=8, seed=0, device="cpu")
    agent.learn(64)
    path = agent.save(tmp_path / "acktr")
    loaded = ACKTR.load(path, device="cpu")
    obs = np.random.default_rng(0).standard_normal((7, 3)).astype(np.float32)
    a, _ = agent.predict(obs, deterministic=True)
    b, _ = loaded.predict(obs, deterministic=True)
    np.testing.assert_array_equal(a, b)
    for name, (A, G) in agent.kfac.factors().items():  # the K-FAC state travels with the model
        A2, G2 = loaded.kfac.factors()[name]
        torch.testing.assert_close(A, A2, rtol=0, atol=0)
        torch.testing.assert_close(G, G2, rtol=0, atol=0)
    assert loaded.kfac.counters == agent.kfac.counters


def test_checkpoint_carries_kfac_state_and_momentum(tmp_path):
    agent = ACKTR("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=8, seed=0, device="cpu")
    agent.learn(64)
    loaded = ACKTR.load(agent.save_checkpoint(tmp_path / "ckpt.safetensors"), device="cpu")
    for (p, q) in zip(agent.policy.parameters(), loaded.policy.parameters()):
        torch.testing.assert_close(agent.optimizer.state[p]["momentum_buffer"],
                                   loaded.optimizer.state[q]["momentum_buffer"], rtol=0, atol=0)
    assert loaded.kfac.counters == agent.kfac.counters
    assert loaded._updates_bound == agent._updates_bound
    assert loaded._lr_multiplier == agent._lr_multiplier


def test_target_kl_adapts_the_learning_rate_by_the_measured_kl():
    """baselines' acktr_cont rule on the measured KL of each update: ÷1.5 above 2·target, ×1.5 below
    target/2, unchanged between, the adapted lr kept within [1e-8, 1]; the next update uses it."""
    agent = ACKTR("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=8, learning_rate=0.25, target_kl=0.01,
                  kl_clip=1.0, seed=0, device="cpu")
    for kl, expected in [(0.03, 1 / 1.5), (0.01, 1 / 1.5), (0.001, 1.0), (0.001, 1.5), (0.001, 2.25),
                         (0.001, 3.375), (0.001, 4.0), (0.001, 4.0)]:  # 0.25 · 4 = 1: the ceiling
        agent._adapt_learning_rate(kl, 0.25)
        assert agent._lr_multiplier == pytest.approx(expected)
    _, stats = one_update(agent)
    assert stats["train/learning_rate"] == pytest.approx(1.0)
    assert stats["geometry/lr_multiplier"] == pytest.approx(4.0)  # the multiplier this update used
    assert agent.optimizer.param_groups[0]["lr"] == pytest.approx(1.0 * (1 - agent.config.momentum))
    if stats["geometry/kl"] > 0.02:  # the step it took at lr 1 decides the next multiplier
        assert agent._lr_multiplier == pytest.approx(4.0 / 1.5)
    # a run with a tiny target shrinks the step size, and learn() logs it
    agent = ACKTR("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=8, target_kl=1e-7, kl_clip=1.0, seed=0, device="cpu")
    agent.learn(160)
    assert agent._lr_multiplier < 1 / 1.5**5


def test_nonfinite_loss_skips_the_update_and_restores_kfac():
    agent = ACKTR("MlpPolicy", "CartPole-v1", n_envs=2, n_steps=8, seed=0, device="cpu")
    agent.learn(32)
    agent.collect_rollout()
    agent.buffer.advantages[0, 0] = float("nan")
    before, factors, counters = params_of(agent), agent.kfac.factors(), agent.kfac.counters
    stats = agent._guarded_update(1.0)
    assert stats["train/skipped_updates"] == 1
    for p, b in zip(agent.policy.parameters(), before):
        assert torch.equal(p.detach(), b)
    assert agent.kfac.counters == counters
    for name, (A, G) in agent.kfac.factors().items():
        assert torch.equal(A, factors[name][0]) and torch.equal(G, factors[name][1])


@pytest.mark.parametrize("bad, match", [
    ({"kl_clip": 0.0}, "kl_clip"), ({"kl_clip": -1e-3}, "kl_clip"), ({"damping": -1e-2}, "damping"),
    ({"damping": 0.0}, "damping"), ({"momentum": 1.0}, "momentum"), ({"stat_decay": 1.5}, "stat_decay"),
    ({"learning_rate": -0.1}, "learning_rate"), ({"update_inverse_every": 0}, "update_inverse_every"),
    ({"update_statistics_every": 1.5}, "update_statistics_every"), ({"max_grad_norm": 0.0}, "max_grad_norm"),
    ({"vf_coef": -1.0}, "vf_coef"), ({"kl_clip": float("inf")}, "kl_clip"), ({"n_step": 5}, "unknown"),
    ({"target_kl": 0.0}, "target_kl"),
])
def test_bad_hyperparameters_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        ACKTR("MlpPolicy", "CartPole-v1", device="cpu", **bad)


def test_registered():
    assert AGENTS["acktr"] is ACKTR


def test_mujoco_preset_builds_and_updates():
    """The MuJoCo preset (per-network step, the batch's own K-FAC factors, the policy step rescaled to kl_clip
    as measured, TRPO's radius on the task) builds on a MuJoCo task and takes a finite update that spends
    kl_clip, with the actor's and the critic's trust regions reported apart."""
    pytest.importorskip("mujoco")
    from agents.presets import preset

    cfg = preset("acktr", "Hopper-v5")
    hyperparameters = cfg["hyperparameters"]
    assert hyperparameters["policy_step"] == "measured" and hyperparameters["target_kl"] is None
    assert hyperparameters["kl_clip"] == preset("trpo", "Hopper-v5")["hyperparameters"]["max_kl"] == 0.03
    agent = ACKTR("MlpPolicy", "Hopper-v5", n_envs=1, seed=0, device="cpu", policy_kwargs=cfg["policy_kwargs"],
                  **{**hyperparameters, "n_steps": 64})
    _, stats = one_update(agent)
    assert stats["geometry/kl"] == pytest.approx(0.03, rel=0.02) and "geometry/eta_critic" in stats
    assert math.isfinite(stats["geometry/kl_rescale"]) and stats["geometry/kl_rescale"] > 0


def test_cnn_policy_learns_to_read_images():
    """The CNN path learns (the issue's smoke test, in seconds): ACKTR with the paper's defaults on
    CnnPolicy — Nature CNN torso shared by actor and critic, K-FAC Conv2d factors, one joint trust region —
    goes from random play (2 of 8 per episode) to at least half way to perfect in 8000 steps."""
    from envs import make_vec_env
    from rlgeom.training.evaluation import evaluate

    def vector_env():
        return gym.vector.SyncVectorEnv([BrightQuadrantEnv] * 4, autoreset_mode=gym.vector.AutoresetMode.SAME_STEP)

    agent = ACKTR("CnnPolicy", vector_env(), seed=0, device="cpu")
    probe = make_vec_env(vector_env())
    torch.manual_seed(1)
    before, _ = evaluate(agent, probe, 40, deterministic=False, seed=1)
    agent.learn(8000)
    torch.manual_seed(1)
    after, _ = evaluate(agent, probe, 40, deterministic=False, seed=1)
    assert before < 3.5 and after >= 5.0, (before, after)


class ReachEnv(gym.Env):
    """A 3-dimensional Gaussian policy's task: reward −|a − target|², target = the first 3 observations."""

    observation_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
    action_space = spaces.Box(-2.0, 2.0, (3,), np.float32)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        self.obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        return self.obs, {}

    def step(self, action):
        self.t += 1
        reward = -float(np.sum((np.asarray(action) - self.obs[:3]) ** 2))
        self.obs = self.np_random.uniform(-1, 1, 4).astype(np.float32)
        return self.obs, reward, False, self.t >= 10, {}


def per_sample_log_std_scores(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """∂ log N(a_i; μ_i, σ)/∂ log σ for every sample i, by autograd per sample (torch.func), [n, d]."""
    def log_density(ls, mu, a):
        return torch.distributions.Normal(mu, ls.exp(), validate_args=False).log_prob(a).sum()

    mean = mean.expand_as(actions)
    return torch.func.vmap(torch.func.grad(log_density), in_dims=(None, 0, 0))(log_std, mean, actions)


def log_std_fisher_by_jacobians(mean: torch.Tensor, log_std: torch.Tensor, samples: int) -> torch.Tensor:
    """The log σ block of the Fisher, E_a[s sᵀ] with s = ∂ log N(a; μ, σ)/∂ log σ, from per-sample Jacobians
    (torch.distributions' density, autograd per sample) over sampled actions; mean over the states."""
    torch.manual_seed(0)
    d = log_std.shape[-1]
    fisher = torch.zeros(d, d, dtype=torch.float64)
    for row in range(mean.shape[0]):
        mu = mean[row].double()
        actions = torch.distributions.Normal(mu, log_std.double().exp()).sample((samples,))
        jac = per_sample_log_std_scores(mu, log_std.double(), actions)
        fisher += jac.t() @ jac / samples                      # [samples, d] per-sample scores
    return fisher / mean.shape[0]


@pytest.mark.parametrize("log_std_step", ["with_actor", "own", "budget"])
def test_log_std_step_is_the_exact_natural_gradient_in_its_trust_region(log_std_step):
    """log σ's update against an independent computation: its gradient from per-sample Jacobians of
    torch.distributions' log-density, its Fisher block from per-sample Jacobians over sampled actions
    (≈ 2I) and exactly as the Hessian of torch's KL(π_old ‖ π) (= 2I); then Δ = −lr·η·(F + λI)⁻¹g with
    η and lr the actor's (with_actor) or η = min(1, √(2 kl_clip / ΔᵀFΔ)) from log σ's own block at the
    scheduled lr (own), where a small kl_clip makes it bind; target_kl's multiplier (set to 0.1 here) scales
    log σ's step under with_actor only."""
    lr, kl_clip, damping = 0.25, 1e-4, 1e-2
    agent = ACKTR("MlpPolicy", ReachEnv(), n_envs=1, n_steps=64, seed=3, device="cpu", momentum=0.0,
                  learning_rate=lr, kl_clip=kl_clip, damping=damping, ent_coef=0.0, max_grad_norm=None,
                  trust_region="per_network", log_std_step=log_std_step, target_kl=0.01)
    agent.policy.actor.scale.raw.data.fill_(-0.3)  # away from σ = 1
    agent._lr_multiplier = 0.1  # as if target_kl had shrunk the actor's lr
    agent._reset_env()
    agent.collect_rollout()
    batch = agent.buffer.full_batch(False)
    log_std = agent.policy.actor.scale.raw.detach().clone()
    mean = agent.policy.dist_params(batch.obs).detach()[:, :3]
    stats = agent.update(agent.buffer, 1.0)
    applied = agent.policy.actor.scale.raw.detach() - log_std

    # g: the policy-gradient loss −mean(Â log π(a|s)) by log σ, per-sample Jacobians of torch's Normal
    actions = batch.actions.double()
    jac = per_sample_log_std_scores(mean.double(), log_std.double(), actions)
    g = -(batch.advantages.double()[:, None] * jac).mean(0)
    # F: sampled per-sample Jacobians ≈ the exact Hessian of the KL, which is 2I
    exact = torch.autograd.functional.hessian(
        lambda ls: torch.distributions.kl_divergence(
            torch.distributions.Normal(mean.double(), log_std.double().exp()),
            torch.distributions.Normal(mean.double(), ls.exp())).sum(-1).mean(), log_std.double())
    torch.testing.assert_close(exact, 2 * torch.eye(3, dtype=torch.float64), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(log_std_fisher_by_jacobians(mean[:4], log_std, 20_000), exact, rtol=0, atol=0.1)

    step = -lr * torch.linalg.solve(exact + damping * torch.eye(3, dtype=torch.float64), g)
    if log_std_step == "budget":  # its own η, unclipped: the step spends half of target_kl (0.01)
        eta = math.sqrt(2 * 0.005 / float(step @ exact @ step))
        assert stats["geometry/eta_log_std"] == pytest.approx(eta, rel=1e-4)
        assert float(applied.double() @ exact @ applied.double()) == pytest.approx(2 * 0.005, rel=1e-4)
    elif log_std_step == "own":
        eta = min(1.0, math.sqrt(2 * kl_clip / float(step @ exact @ step)))
        assert eta < 1 and stats["geometry/eta_log_std"] == pytest.approx(eta, rel=1e-4)
        assert float(applied.double() @ exact @ applied.double()) == pytest.approx(2 * kl_clip, rel=1e-4)
    else:
        eta = stats["geometry/eta"] * 0.1  # the actor's η, set by its weights as well, and its adapted lr
        assert "geometry/eta_log_std" not in stats
    torch.testing.assert_close(applied.double(), eta * step, rtol=1e-4, atol=1e-9)


def test_own_log_std_trust_region_needs_a_gaussian_scale():
    for value in ("own", "budget"):
        with pytest.raises(ValueError, match=f"log_std_step='{value}' needs a Gaussian policy"):
            ACKTR("MlpPolicy", "CartPole-v1", n_steps=8, seed=0, device="cpu", log_std_step=value)
    with pytest.raises(ValueError, match="log_std_step must be one of with_actor, own, budget"):
        ACKTR("MlpPolicy", "Pendulum-v1", n_steps=8, seed=0, device="cpu", log_std_step="exact")


def critic_and_actor_steps(critic_step: str, multiplier: float):
    """One update from the same state and rollout (seed 3), target_kl's multiplier set to `multiplier`, the
    trust regions too wide to bind: the applied steps of the critic's and the actor's parameters."""
    agent = ACKTR("MlpPolicy", ReachEnv(), n_envs=1, n_steps=64, seed=3, device="cpu", momentum=0.0,
                  learning_rate=0.25, kl_clip=1e6, ent_coef=0.0, max_grad_norm=None,
                  trust_region="per_network", critic_step=critic_step, target_kl=0.01)
    agent._lr_multiplier = multiplier
    before, stats = one_update(agent)
    assert stats["geometry/eta"] == 1.0 and stats["geometry/eta_critic"] == 1.0
    steps = {id(p): p.detach() - b for p, b in zip(agent.policy.parameters(), before)}
    critic_ids = {id(p) for p in agent.policy.critic_parameters()}
    critic = torch.cat([steps[i].flatten() for i in steps if i in critic_ids])
    actor = torch.cat([steps[id(p)].flatten() for p in agent.policy.actor_parameters()])
    return critic, actor


def test_critic_step_own_keeps_the_critic_at_the_scheduled_lr():
    """critic_step="own": target_kl's multiplier (the policy's measured KL) scales the actor's step only.
    With the multiplier at 0.1 the critic's step is 10× that of critic_step="with_actor" from the same
    state, and the same as with_actor's at multiplier 1; the actor's step is the same under both values."""
    critic_own, actor_own = critic_and_actor_steps("own", 0.1)
    critic_with, actor_with = critic_and_actor_steps("with_actor", 0.1)
    critic_full, _ = critic_and_actor_steps("with_actor", 1.0)
    assert critic_with.abs().max() > 0
    torch.testing.assert_close(critic_own, 10 * critic_with, rtol=1e-4, atol=1e-6)  # float32 p - p_old
    torch.testing.assert_close(critic_own, critic_full, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(actor_own, actor_with, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="critic_step must be one of with_actor, own"):
        ACKTR("MlpPolicy", "Pendulum-v1", n_steps=8, seed=0, device="cpu", critic_step="scheduled")


def critic_pass_run(critic_updates: int, kl_clip: float):
    """One update (seed 3, ReachEnv, small networks so that the explicit Kronecker products stay small)."""
    agent = ACKTR("MlpPolicy", ReachEnv(), n_envs=1, n_steps=64, seed=3, device="cpu", momentum=0.0,
                  learning_rate=0.25, kl_clip=kl_clip, ent_coef=0.0, max_grad_norm=None, update_inverse_every=1,
                  trust_region="per_network", critic_updates=critic_updates, policy_kwargs={"net_arch": [8, 8]})
    agent._reset_env()
    agent.collect_rollout()
    batch = agent.buffer.full_batch(False)
    stats = agent.update(agent.buffer, 1.0)
    return agent, batch, stats


def explicit_kfac_critic_step(agent, batch, lr: float, kl_clip: float) -> list[torch.Tensor]:
    """The critic's next step from `agent`'s state, computed independently of ACKTR's code: the gradient of
    c_v·E[(V − R)²] by autograd, each layer's (A ⊗ G + λI) built with torch.kron from the running factors and
    solved with torch.linalg.solve (float64), the K-FAC quadratic form of the whole step by the same explicit
    matrices, η = min(1, √(2 kl_clip / ΔᵀF̂Δ)); the step −lr·η·(A ⊗ G + λI)⁻¹ vec g per critic parameter."""
    policy, damping = agent.policy, agent.config.damping
    loss = agent.config.vf_coef * torch.nn.functional.mse_loss(policy.value(batch.obs), batch.returns)
    names = {module: name for name, module in policy.named_modules()}
    factors = agent.kfac.factors()
    layers = [m for m in policy.critic.modules() if isinstance(m, torch.nn.Linear)]
    grads = torch.autograd.grad(loss, [p for m in layers for p in (m.weight, m.bias)])
    steps, quad = {}, 0.0
    for i, m in enumerate(layers):
        A, G = (f.double() for f in factors[names[m]])
        g = torch.cat([grads[2 * i], grads[2 * i + 1][:, None]], dim=1).double()   # [out, in + 1]
        K = torch.kron(A, G)                                                        # vec(G X A) = (A ⊗ G) vec X
        vec_g = g.t().reshape(-1)                                                   # column-major vec
        vec_step = -lr * torch.linalg.solve(K + damping * torch.eye(K.shape[0], dtype=K.dtype), vec_g)
        quad += float(vec_step @ K @ vec_step)
        step = vec_step.reshape(g.shape[1], g.shape[0]).t()
        steps[m.weight], steps[m.bias] = step[:, :-1], step[:, -1]
    eta = min(1.0, math.sqrt(2 * kl_clip / quad))
    return [eta * steps[p] for p in policy.critic_parameters()]


@pytest.mark.parametrize("kl_clip", [1e6, 1e-4])  # the critic's trust region wide (η = 1), or binding
def test_critic_updates_take_more_kfac_steps_of_the_critic_alone(kl_clip):
    """critic_updates=2 against an independent computation: from the state that critic_updates=1 leaves (the
    same joint step, same rollout), the critic takes one more step, explicit_kfac_critic_step's; the actor's
    parameters are critic_updates=1's exactly; inside the trust region the extra step lowers the batch's value loss."""
    one, batch, _ = critic_pass_run(1, kl_clip)
    two, batch_two, stats = critic_pass_run(2, kl_clip)
    torch.testing.assert_close(batch_two.obs, batch.obs, rtol=0, atol=0)
    for p_one, p_two in zip(one.policy.actor_parameters(), two.policy.actor_parameters()):
        torch.testing.assert_close(p_two, p_one, rtol=0, atol=0)
    expected = explicit_kfac_critic_step(one, batch, lr=0.25, kl_clip=kl_clip)
    for p_one, p_two, step in zip(one.policy.critic_parameters(), two.policy.critic_parameters(), expected):
        torch.testing.assert_close((p_two - p_one).double(), step, rtol=1e-3, atol=1e-7)
    assert max(float(s.abs().max()) for s in expected) > 1e-4  # the step is not vacuous
    with torch.no_grad():
        loss_one = torch.nn.functional.mse_loss(one.policy.value(batch.obs), batch.returns)
        values_two = two.policy.value(batch.obs)
    if kl_clip < 1:  # within the trust region the natural step lowers the loss (the unclipped one overshoots)
        assert float(torch.nn.functional.mse_loss(values_two, batch.returns)) < float(loss_one)
    ev = 1 - float((batch.returns - values_two).var(correction=0) / batch.returns.var(correction=0))
    assert stats["train/explained_variance_after_fit"] == pytest.approx(ev, rel=1e-4, abs=1e-6)
    assert two.kfac.counters["steps"] == one.kfac.counters["steps"] == 1  # the pass is a repeat: no T_inv count


def test_critic_updates_need_separate_networks():
    with pytest.raises(ValueError, match="critic_updates=5 steps the critic alone.*shares its feature extractor"):
        ACKTR("CnnPolicy", TinyImageEnv(), n_steps=8, seed=0, device="cpu", critic_updates=5)
    with pytest.raises(ValueError, match="critic_updates"):
        ACKTR("MlpPolicy", "Pendulum-v1", n_steps=8, seed=0, device="cpu", critic_updates=0)


def normalised_run(policy_step: str, learning_rate: float, kl_clip: float = 1e-3):
    agent = ACKTR("MlpPolicy", "Pendulum-v1", n_envs=2, n_steps=16, seed=0, device="cpu", momentum=0.0,
                  learning_rate=learning_rate, kl_clip=kl_clip, update_inverse_every=1, trust_region="per_network",
                  policy_step=policy_step)
    before, stats = one_update(agent)
    return agent, before, stats


def actor_step(agent, before) -> list[torch.Tensor]:
    """The actor's parameter change in the update `before` was taken ahead of (params_of's order)."""
    start = {id(p): b for p, b in zip(agent.policy.parameters(), before)}
    return [p.detach() - start[id(p)] for p in agent.policy.actor_parameters()]


def test_normalised_policy_step_always_spends_kl_clip_whatever_the_lr():
    """policy_step="normalised": the actor's applied step sits on the K-FAC KL of kl_clip (½ΔᵀF̂Δ = kl_clip)
    at a small and a large lr alike, and is the same step at both (the lr cancels); the critic keeps the clip
    at its own lr. The paper's clip, at the small lr, stays inside (η = 1)."""
    kl_clip = 1e-3
    small, small_before, small_stats = normalised_run("normalised", 1e-4, kl_clip)
    large, large_before, large_stats = normalised_run("normalised", 10.0, kl_clip)
    for agent, before in ((small, small_before), (large, large_before)):
        assert applied_step_quadratic(agent, before, "actor") == pytest.approx(2 * kl_clip, rel=1e-3)
    steps = [actor_step(agent, before) for agent, before in ((small, small_before), (large, large_before))]
    for step_small, step_large in zip(*steps):
        torch.testing.assert_close(step_small, step_large, rtol=1e-3, atol=1e-9)
    assert max(float(s.abs().max()) for s in steps[0]) > 1e-4  # the step is not vacuous
    assert small_stats["geometry/eta"] > 1 > large_stats["geometry/eta"]
    # the critic is outside the normalisation: its step grows with the lr (clipped at the large one)
    assert applied_step_quadratic(small, small_before, "critic") < applied_step_quadratic(large, large_before, "critic")
    clipped, clipped_before, clipped_stats = normalised_run("clip", 1e-4, kl_clip)
    assert clipped_stats["geometry/eta"] == 1.0
    assert applied_step_quadratic(clipped, clipped_before, "actor") < 0.01 * 2 * kl_clip


def test_normalised_policy_step_refuses_target_kl():
    with pytest.raises(ValueError, match="policy_step='normalised'.*target_kl=None"):
        ACKTR("MlpPolicy", "Pendulum-v1", n_steps=8, seed=0, device="cpu", policy_step="normalised", target_kl=0.01)
    with pytest.raises(ValueError, match="policy_step must be one of clip, normalised, measured, got .exact."):
        ACKTR("MlpPolicy", "Pendulum-v1", n_steps=8, seed=0, device="cpu", policy_step="exact")


def batch_kl(policy, start_params: list, obs: torch.Tensor) -> float:
    """Mean KL(π_start ‖ π_now) of a diagonal-Gaussian policy on obs, with torch.distributions (not rlgeom's
    KL): π_start is a copy of the policy with the parameters `start_params` (params_of's order)."""
    import copy

    old = copy.deepcopy(policy)
    with torch.no_grad():
        for p, start in zip(old.parameters(), start_params):
            p.copy_(start)
        dists = []
        for net in (old, policy):
            mean, log_std = net.dist_params(obs).chunk(2, dim=-1)
            dists.append(torch.distributions.Normal(mean, log_std.exp()))
    return float(torch.distributions.kl_divergence(*dists).sum(-1).mean())


def test_measured_policy_step_spends_kl_clip_as_measured():
    """policy_step="measured": the update's KL, computed here from the distributions before and after, is
    kl_clip (to 1 %, after two rescales), where the normalised step alone misses it; the actor's step is the
    normalised one times geometry/kl_rescale; the critic's step is not rescaled."""
    kl_clip = 0.02
    normalised, normalised_before, _ = normalised_run("normalised", 1.0, kl_clip)
    measured, measured_before, stats = normalised_run("measured", 1.0, kl_clip)
    obs = measured.buffer.full_batch().obs
    kl_normalised = batch_kl(normalised.policy, normalised_before, obs)
    kl_measured = batch_kl(measured.policy, measured_before, obs)
    assert kl_measured == pytest.approx(kl_clip, rel=0.01)
    assert stats["geometry/kl"] == pytest.approx(kl_measured, rel=1e-3)
    assert abs(kl_normalised / kl_clip - 1) > 0.1  # K-FAC's model alone misses the target here
    rescale = stats["geometry/kl_rescale"]
    for step_n, step_m in zip(actor_step(normalised, normalised_before), actor_step(measured, measured_before)):
        torch.testing.assert_close(step_m, rescale * step_n, rtol=1e-3, atol=1e-7)  # float32 θ + cΔ − θ
    for p_n, p_m in zip(normalised.policy.critic_parameters(), measured.policy.critic_parameters()):
        torch.testing.assert_close(p_m, p_n, rtol=0, atol=0)


def test_measured_policy_step_needs_momentum_zero():
    with pytest.raises(ValueError, match="policy_step='measured'.*momentum=0.9.*use momentum=0"):
        ACKTR("MlpPolicy", "Pendulum-v1", n_steps=8, seed=0, device="cpu", policy_step="measured", momentum=0.9)
    with pytest.raises(ValueError, match="policy_step='measured'.*target_kl=None"):
        ACKTR("MlpPolicy", "Pendulum-v1", n_steps=8, seed=0, device="cpu", policy_step="measured", momentum=0.0,
              target_kl=0.01)
