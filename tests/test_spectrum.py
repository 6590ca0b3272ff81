"""rlgeom.geometry.spectrum against explicit matrices on tiny float64 policies.

The reference Fisher is built here from per-sample Jacobians (torch.autograd.functional.jacobian in
a plain loop) and closed-form distribution Fishers, independent of rlgeom.geometry.fisher; the reference
value Hessian is torch.autograd.functional.hessian of the loss as a function of the flat critic
parameters.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch.func import functional_call

from rlgeom.data.buffer import Batch
from rlgeom.geometry.fisher import PolicyFisher
from rlgeom.models.parameters import flat_parameters
from rlgeom.models.policies import ActorCriticPolicy
from rlgeom.geometry.spectrum import (
    ValueLossHessian,
    effective_condition_number,
    filter_normalized_direction,
    fisher_spectrum,
    gradient_top_k_share,
    hutchinson_trace,
    policy_sharpness,
    random_direction_sharpness,
    top_eigenpairs,
    training_geometry,
    value_hessian_spectrum,
)

DTYPE = torch.float64
BATCH = 12


def tiny_policy(kind: str, seed: int = 0) -> ActorCriticPolicy:
    torch.manual_seed(seed)
    obs_space = spaces.Box(-np.inf, np.inf, (3,), np.float32)
    act_space = spaces.Discrete(3) if kind == "categorical" else spaces.Box(-1, 1, (2,), np.float32)
    policy = ActorCriticPolicy(obs_space, act_space, net_arch=[4], ortho_init=False, log_std_init=-0.4)
    return policy.to(DTYPE)


def explicit_fisher(policy: ActorCriticPolicy, inputs: torch.Tensor, kind: str) -> torch.Tensor:
    """E_i[J_iᵀ F_dist,i J_i] with J_i from autograd's jacobian, one sample at a time."""
    names = [n for n, _ in policy.actor.named_parameters()]
    shapes = [p.shape for _, p in policy.actor.named_parameters()]
    theta = flat_parameters(list(policy.actor.parameters()))

    def phi_of(flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        chunks = torch.split(flat, [int(np.prod(s)) for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return functional_call(policy.actor, params, (x[None],))[0]

    total = torch.zeros(theta.numel(), theta.numel(), dtype=DTYPE)
    for x in inputs:
        jac = torch.autograd.functional.jacobian(lambda f: phi_of(f, x), theta)  # [P, d]
        phi = phi_of(theta, x).detach()
        if kind == "categorical":
            p = torch.softmax(phi, dim=0)
            dist_fisher = torch.diag(p) - torch.outer(p, p)
        else:
            log_std = phi[2:]
            dist_fisher = torch.diag(torch.cat([torch.exp(-2 * log_std), 2 * torch.ones_like(log_std)]))
        total += jac.T @ dist_fisher @ jac
    return total / inputs.shape[0]


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_lanczos_top_eigenvalues_match_explicit_fisher(kind):
    policy = tiny_policy(kind)
    inputs = torch.randn(BATCH, 3, dtype=DTYPE)
    reference = torch.linalg.eigvalsh(explicit_fisher(policy, inputs, kind)).flip(0)
    fisher = PolicyFisher(policy.actor, policy.family, inputs, damping=0.0)
    spec = fisher_spectrum(fisher, k=4, n_probes=1, tol=0.0)
    assert spec.dim == fisher.num_parameters > 10  # Lanczos, not the dense fallback
    torch.testing.assert_close(spec.eigenvalues, reference[:4], rtol=1e-7, atol=1e-10)
    # the eigenvectors are eigenvectors: F u = λ u
    for i in range(4):
        u = spec.eigenvectors[:, i]
        torch.testing.assert_close(fisher.fisher_product(u), spec.eigenvalues[i] * u, rtol=1e-6, atol=1e-8)


def test_dense_fallback_for_tiny_operators():
    a = torch.tensor([[2.0, 1.0, 0.0], [1.0, 3.0, 0.5], [0.0, 0.5, 1.0]], dtype=DTYPE)
    values, vectors, products = top_eigenpairs(lambda v: a @ v, 3, k=2, dtype=DTYPE)
    torch.testing.assert_close(values, torch.linalg.eigvalsh(a).flip(0)[:2])
    assert products == 3 and vectors.shape == (3, 2)
    with pytest.raises(ValueError, match="k must be"):
        top_eigenpairs(lambda v: a @ v, 3, k=4, dtype=DTYPE)


def test_hutchinson_trace_within_its_standard_error():
    policy = tiny_policy("gaussian")
    inputs = torch.randn(BATCH, 3, dtype=DTYPE)
    explicit = explicit_fisher(policy, inputs, "gaussian")
    fisher = PolicyFisher(policy.actor, policy.family, inputs, damping=0.0)
    n = 400
    estimate = hutchinson_trace(fisher.fisher_product, fisher.num_parameters, n, dtype=DTYPE)
    # Var of one Rademacher probe: 2(‖F‖_F² − Σ F_ii²); allow 4 standard errors
    variance = 2 * (explicit.pow(2).sum() - explicit.diagonal().pow(2).sum())
    tolerance = 4 * float(torch.sqrt(variance / n))
    exact = float(explicit.trace())
    assert abs(estimate - exact) <= tolerance
    assert tolerance < 0.1 * exact  # the tolerance is tight enough to mean something
    # fixed generator: the same probes give the same estimate
    assert estimate == hutchinson_trace(fisher.fisher_product, fisher.num_parameters, n, dtype=DTYPE)


def test_value_hessian_top_eigenvalue_matches_autograd_hessian():
    policy = tiny_policy("categorical")
    inputs, returns = torch.randn(BATCH, 3, dtype=DTYPE), torch.randn(BATCH, dtype=DTYPE) * 3
    names = [n for n, _ in policy.critic.named_parameters()]
    shapes = [p.shape for _, p in policy.critic.named_parameters()]
    phi = flat_parameters(list(policy.critic.parameters()))

    def loss_of(flat):
        chunks = torch.split(flat, [int(np.prod(s)) for s in shapes])
        params = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        return ((functional_call(policy.critic, params, (inputs,)).squeeze(-1) - returns) ** 2).mean()

    reference = torch.linalg.eigvalsh(torch.autograd.functional.hessian(loss_of, phi)).flip(0)
    hessian = ValueLossHessian(policy.critic, inputs, returns)
    spec = value_hessian_spectrum(hessian, k=3, n_probes=2000, tol=0.0)
    torch.testing.assert_close(spec.eigenvalues, reference[:3], rtol=1e-7, atol=1e-10)
    assert spec.trace == pytest.approx(float(reference.sum()), rel=0.15)


@pytest.mark.parametrize("one_d", ["zero", "scale"])
def test_filter_normalisation_gives_each_filter_the_models_norm(one_d):
    conv = torch.nn.Conv2d(2, 3, 3)
    linear = torch.nn.Linear(4, 5)
    params = [conv.weight, conv.bias, linear.weight, linear.bias]
    d = filter_normalized_direction(params, torch.Generator().manual_seed(1), one_d)
    pieces = torch.split(d, [p.numel() for p in params])
    for p, piece in zip(params, pieces):
        piece = piece.reshape(p.shape)
        if p.dim() > 1:  # one filter per output channel / row
            torch.testing.assert_close(piece.flatten(1).norm(dim=1), p.detach().flatten(1).norm(dim=1))
        elif one_d == "zero":
            assert torch.count_nonzero(piece) == 0
        else:
            torch.testing.assert_close(piece.norm(), p.detach().norm())
    with pytest.raises(ValueError, match="one_d"):
        filter_normalized_direction(params, torch.Generator(), "bogus")


def test_gradient_share_is_one_for_an_eigenvector_and_splits_otherwise():
    policy = tiny_policy("categorical")
    inputs = torch.randn(BATCH, 3, dtype=DTYPE)
    spec = fisher_spectrum(PolicyFisher(policy.actor, policy.family, inputs, damping=0.0), k=3, tol=0.0)
    u = spec.eigenvectors
    assert gradient_top_k_share(3.7 * u[:, 1], u) == pytest.approx(1.0, abs=1e-12)
    orthogonal = torch.randn(u.shape[0], dtype=DTYPE)
    orthogonal -= u @ (u.T @ orthogonal)
    assert gradient_top_k_share(orthogonal, u) == pytest.approx(0.0, abs=1e-12)
    assert gradient_top_k_share(u[:, 0] + orthogonal / orthogonal.norm(), u) == pytest.approx(0.5, abs=1e-12)
    assert np.isnan(gradient_top_k_share(torch.zeros_like(orthogonal), u))
    assert spec.effective_condition_number == pytest.approx(effective_condition_number(spec.top, spec.trace, spec.dim))


def test_kl_sharpness_follows_the_quadratic_model_for_small_radius():
    """E_d[KL(π_θ ‖ π_θ+εd)] ≈ ½ ε² E_d[dᵀFd] for small ε, direction by direction."""
    policy = tiny_policy("gaussian")
    inputs = torch.randn(BATCH, 3, dtype=DTYPE)
    fisher = PolicyFisher(policy.actor, policy.family, inputs, damping=0.0)
    params = list(policy.actor.parameters())
    theta = flat_parameters(params)
    eps = 1e-3
    result = random_direction_sharpness(fisher.mean_kl, params, eps, 8, generator=torch.Generator().manual_seed(3))
    directions_gen = torch.Generator().manual_seed(3)
    predicted = [0.5 * eps**2 * float(fisher.quadratic_form(filter_normalized_direction(params, directions_gen)))
                 for _ in range(8)]
    np.testing.assert_allclose(result.deltas, predicted, rtol=1e-2)
    assert torch.equal(flat_parameters(params), theta)  # restored exactly
    summary = result.summary()
    assert summary["max"] == pytest.approx(max(predicted), rel=1e-2) and summary["q05"] <= summary["q95"]


def test_training_geometry_record_and_policy_sharpness():
    policy = tiny_policy("gaussian")
    obs = torch.randn(64, 3, dtype=DTYPE)
    with torch.no_grad():
        dist = policy.get_distribution(obs)
        actions = dist.sample()
        log_probs = dist.log_prob(actions)
    advantages, returns = torch.randn(64, dtype=DTYPE), torch.randn(64, dtype=DTYPE)

    class Buffer:
        def full_batch(self, normalize_advantage):
            return Batch(obs, actions, log_probs, torch.zeros(64, dtype=DTYPE), advantages, returns)

    rng_state = torch.get_rng_state()
    record = training_geometry(policy, Buffer(), k=3, n_probes=4)
    assert torch.equal(torch.get_rng_state(), rng_state)  # the global RNG is untouched
    assert set(record) == {
        "geometry/fisher_top_eigenvalue", "geometry/fisher_trace", "geometry/fisher_top_over_trace",
        "geometry/gradient_top_k_share", "geometry/value_hessian_top_eigenvalue", "geometry/value_hessian_trace",
    }
    assert 0.0 <= record["geometry/gradient_top_k_share"] <= 1.0 + 1e-9
    assert record["geometry/fisher_top_over_trace"] == pytest.approx(
        record["geometry/fisher_top_eigenvalue"] / record["geometry/fisher_trace"])
    sharp = policy_sharpness(policy, obs, actions, log_probs, advantages, epsilon=0.05, n_directions=5, k=3)
    assert sharp["mean_kl"]["min"] >= 0.0 and len(sharp["fisher_top_eigenvalues"]) == 3


def test_geometry_every_logs_the_record_and_leaves_training_unchanged():
    from agents import PPO

    def train(geometry_every):
        agent = PPO("MlpPolicy", "CartPole-v1", seed=0, n_steps=32, batch_size=32, n_epochs=1,
                    policy_kwargs=dict(net_arch=[8]), geometry_every=geometry_every)
        logged, log = [], agent._log
        agent._log = lambda stats, *rest: (logged.append(dict(stats)), log(stats, *rest))
        agent.learn(96)
        agent.env.close()
        return flat_parameters(list(agent.policy.parameters())), logged

    with_geometry, logged = train(2)
    without, plain = train(None)
    assert torch.equal(with_geometry, without)  # the hook draws from its own generator only
    assert [("geometry/fisher_trace" in s) for s in logged] == [False, True, False]
    assert not any(k.startswith("geometry/") for s in plain for k in s)
    assert logged[1]["geometry/fisher_top_eigenvalue"] > 0
    with pytest.raises(ValueError, match="geometry_every"):
        PPO("MlpPolicy", "CartPole-v1", geometry_every=0)
