"""rlgeom.geometry.fisher against independent, obviously-correct computations on tiny float64 networks.

The reference Fisher is built explicitly, E_i[J_iᵀ F_dist,i J_i], from per-sample Jacobians
(torch.autograd.functional.jacobian in a plain loop) and closed-form distribution Fishers written
here, not taken from rlgeom.models.distributions.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn
from torch.func import functional_call

from rlgeom.models.distributions import BernoulliFamily, CategoricalFamily, DiagGaussianFamily, MultiCategoricalFamily
from rlgeom.models.networks import written_out_applies
from rlgeom.geometry.fisher import (
    PolicyFisher,
    backtracking_line_search,
    conjugate_gradient,
    kl_scale,
    natural_step,
)
from rlgeom.models.parameters import assign_flat_parameters, flat_gradient, flat_parameters

DTYPE = torch.float64
BATCH = 8


# ---------------------------------------------------------------------------------------------
# tiny actors and the explicit reference Fisher
# ---------------------------------------------------------------------------------------------


def mlp(out: int) -> nn.Module:
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, out))


class GaussianActor(nn.Module):
    """3→5→2 tanh MLP for the mean, a state-independent log σ broadcast over the batch."""

    def __init__(self):
        super().__init__()
        self.mean = mlp(2)
        self.log_std = nn.Parameter(torch.tensor([-0.3, 0.2]))

    def forward(self, x):
        mean = self.mean(x)
        return torch.cat([mean, self.log_std.expand_as(mean)], dim=-1)


def make_case(kind: str, seed: int = 0, batch: int = BATCH):
    torch.manual_seed(seed)
    if kind == "categorical":
        actor, family = mlp(4), CategoricalFamily(4)
    elif kind == "multicategorical":
        actor, family = mlp(5), MultiCategoricalFamily((2, 3))
    elif kind == "bernoulli":
        actor, family = mlp(3), BernoulliFamily(3)
    else:
        actor, family = GaussianActor(), DiagGaussianFamily(2)
    actor = actor.to(DTYPE)
    inputs = torch.randn(batch, 3, dtype=DTYPE)
    return actor, family, inputs


def closed_form_dist_fisher(kind: str, phi: torch.Tensor) -> torch.Tensor:
    """F_dist for one sample's parameters φ [P]: diag(p) − ppᵀ per categorical, diag(1/σ², 2)."""
    if kind == "gaussian":
        log_std = phi[2:]
        return torch.diag(torch.cat([torch.exp(-2 * log_std), 2 * torch.ones_like(log_std)]))
    if kind == "bernoulli":  # independent coins on logits: p(1 - p) each
        p = 1 / (1 + torch.exp(-phi))
        return torch.diag(p * (1 - p))
    sizes = (4,) if kind == "categorical" else (2, 3)
    blocks = []
    for logits in torch.split(phi, sizes):
        p = torch.softmax(logits, dim=0)
        blocks.append(torch.diag(p) - torch.outer(p, p))
    return torch.block_diag(*blocks)


def explicit_fisher(actor: nn.Module, kind: str, inputs: torch.Tensor) -> torch.Tensor:
    """E_i[J_iᵀ F_dist(φ_i) J_i] at the actor's current parameters, one sample at a time."""
    names = [n for n, _ in actor.named_parameters()]
    shapes = [p.shape for _, p in actor.named_parameters()]
    theta = torch.cat([p.detach().reshape(-1) for p in actor.parameters()])

    def unflatten(flat):
        out, i = {}, 0
        for n, s in zip(names, shapes):
            k = math.prod(s)
            out[n] = flat[i : i + k].reshape(s)
            i += k
        return out

    total = torch.zeros(theta.numel(), theta.numel(), dtype=DTYPE)
    for x in inputs:
        phi_of = lambda flat: functional_call(actor, unflatten(flat), (x[None],))[0]  # noqa: E731
        jac = torch.autograd.functional.jacobian(phi_of, theta)  # [P, d]
        f_dist = closed_form_dist_fisher(kind, phi_of(theta).detach())
        total += jac.T @ f_dist @ jac
    return total / inputs.shape[0]


def perturb(actor: nn.Module, scale: float = 0.3, seed: int = 1) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in actor.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=DTYPE))


def assert_rel_close(actual, expected, rel=1e-5):
    err = torch.linalg.vector_norm(actual - expected) / torch.linalg.vector_norm(expected)
    assert err < rel, f"relative error {err:.3e}"


KINDS = ["categorical", "multicategorical", "bernoulli", "gaussian"]
METHODS = ["gauss_newton", "kl_hessian"]


# ---------------------------------------------------------------------------------------------
# flat parameter helpers
# ---------------------------------------------------------------------------------------------


def test_flat_parameters_round_trip_and_size_check():
    actor, _, _ = make_case("gaussian")
    params = list(actor.parameters())
    flat = flat_parameters(params)
    assert flat.shape == (sum(p.numel() for p in params),)
    new = torch.arange(flat.numel(), dtype=DTYPE)
    assign_flat_parameters(params, new)
    assert torch.equal(flat_parameters(params), new)
    assert torch.equal(actor.log_std.detach(), new[:2])  # own parameters come before submodules'
    with pytest.raises(ValueError, match="entries"):
        assign_flat_parameters(params, new[:-1])


def test_flat_gradient_fills_zeros_for_unused_parameters():
    a = torch.tensor([1.0, 2.0], dtype=DTYPE, requires_grad=True)
    unused = torch.zeros(3, dtype=DTYPE, requires_grad=True)
    b = torch.tensor(3.0, dtype=DTYPE, requires_grad=True)
    loss = (a**2).sum() * b
    g = flat_gradient(loss, [a, unused, b])
    assert torch.equal(g, torch.tensor([6.0, 12.0, 0.0, 0.0, 0.0, 5.0], dtype=DTYPE))
    assert torch.equal(flat_gradient([None, torch.ones(2)], [unused, a]), torch.tensor([0, 0, 0, 1, 1.0]))


# ---------------------------------------------------------------------------------------------
# KL and Fisher-vector products
# ---------------------------------------------------------------------------------------------


def test_kl_is_zero_at_construction_and_matches_closed_form_gaussian_kl():
    actor, family, inputs = make_case("gaussian")
    pf = PolicyFisher(actor, family, inputs)
    assert pf.mean_kl().abs() < 1e-14
    old = actor(inputs).detach()
    perturb(actor)
    new = actor(inputs).detach()
    mu0, ls0, mu1, ls1 = old[:, :2], old[:, 2:], new[:, :2], new[:, 2:]
    kl = (ls1 - ls0 + (torch.exp(2 * ls0) + (mu0 - mu1) ** 2) / (2 * torch.exp(2 * ls1)) - 0.5).sum(-1)
    torch.testing.assert_close(pf.kl(), kl)
    torch.testing.assert_close(pf.mean_kl(), kl.mean())
    torch.testing.assert_close(pf.max_kl(), kl.max())
    assert pf.mean_kl().requires_grad
    entropy = (0.5 * math.log(2 * math.pi * math.e) + new[:, 2:]).sum(-1).mean()
    torch.testing.assert_close(pf.entropy(), entropy)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("moved", [False, True], ids=["at_old", "moved"])
@pytest.mark.parametrize("linearised", [False, True], ids=["per_call", "linearised"])
def test_fvp_matches_explicit_fisher(kind, method, moved, linearised):
    actor, family, inputs = make_case(kind)
    pf = PolicyFisher(actor, family, inputs, damping=0.0, method=method)
    if moved:  # F must be taken at the current parameters, not at the snapshot
        perturb(actor)
    fisher = explicit_fisher(actor, kind, inputs)
    gen = torch.Generator().manual_seed(2)
    with pf.linearised() if linearised else contextlib.nullcontext():
        for _ in range(3):  # repeated products reuse the retained graph
            v = torch.randn(pf.num_parameters, generator=gen, dtype=DTYPE)
            assert_rel_close(pf.fvp(v), fisher @ v)
            torch.testing.assert_close(pf.quadratic_form(v), v @ fisher @ v)


def policy_actor(kind: str, **kw):
    """rlgeom's own MLP actor (the one agents train) for `kind`, in float64."""
    from gymnasium import spaces

    from rlgeom.models.policies import ActorCriticPolicy

    action_space = {"categorical": spaces.Discrete(4), "multicategorical": spaces.MultiDiscrete([2, 3]),
                    "gaussian": spaces.Box(-1, 1, (2,))}[kind]
    torch.manual_seed(3)
    policy = ActorCriticPolicy(spaces.Box(-5, 5, (3,)), action_space, net_arch=[6, 5], ortho_init=False, **kw)
    return policy.actor.to(DTYPE), policy.family


@pytest.mark.parametrize("kind, kw", [
    ("categorical", {}), ("multicategorical", {"activation_fn": "relu"}), ("gaussian", {}),
    ("gaussian", {"scale_parameterisation": "std", "log_std_init": -0.4}),
    ("gaussian", {"scale_parameterisation": "var", "log_std_init": 0.3}),
])
@pytest.mark.parametrize("moved", [False, True], ids=["at_old", "moved"])
@pytest.mark.parametrize("linearised", [False, True], ids=["per_call", "linearised"])
def test_written_out_gauss_newton_product_matches_explicit_fisher(kind, kw, moved, linearised):
    """rlgeom's MLP actors take the written-out Jv / Jᵀu (rlgeom.models.networks): it must be the Fisher too."""
    actor, family = policy_actor(kind, **kw)
    inputs = torch.randn(BATCH, 3, dtype=DTYPE)
    if moved:
        perturb(actor)
    assert written_out_applies(actor, inputs)  # the path under test is the one taken
    pf = PolicyFisher(actor, family, inputs, damping=0.0)
    fisher = explicit_fisher(actor, kind, inputs)
    gen = torch.Generator().manual_seed(4)
    with pf.linearised() if linearised else contextlib.nullcontext():
        for _ in range(3):
            v = torch.randn(pf.num_parameters, generator=gen, dtype=DTYPE)
            assert_rel_close(pf.fvp(v), fisher @ v)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("kw", [{}, {"full_std": False, "use_expln": True, "log_std_init": 0.5}])
@pytest.mark.parametrize("moved", [False, True], ids=["at_old", "moved"])
def test_gsde_fisher_product_matches_explicit_fisher(method, kw, moved):
    """gSDE's σ(s) depends on θ through its log_std matrix (its features φ(s) enter without gradient):
    J of [μ(s), log σ(s)] carries both, and the product must still be the explicit Fisher."""
    actor, family = policy_actor("gaussian", use_sde=True, **kw)
    inputs = torch.randn(BATCH, 3, dtype=DTYPE)
    if moved:
        perturb(actor)
    assert not written_out_applies(actor, inputs)  # a state-dependent scale takes torch.func
    pf = PolicyFisher(actor, family, inputs, damping=0.0, method=method)
    fisher = explicit_fisher(actor, "gaussian", inputs)
    names = [n for n, _ in actor.named_parameters()]
    assert names[-1] == "scale.log_std"  # θ's last entries: the scale's matrix, registered after the head
    scale_block = slice(-actor.scale.log_std.numel(), None)
    assert fisher[scale_block, scale_block].abs().sum() > 0  # the scale's block is really there
    gen = torch.Generator().manual_seed(5)
    with pf.linearised():
        for _ in range(3):
            v = torch.randn(pf.num_parameters, generator=gen, dtype=DTYPE)
            assert_rel_close(pf.fvp(v), fisher @ v)


@pytest.mark.parametrize("kind, kw", [("gaussian", {"scale_parameterisation": "var"}), ("categorical", {})])
def test_written_out_product_in_float32_on_a_subsample_equals_the_torch_func_product(kind, kw):
    """At a size where tanh takes its sigmoid form (float32, ≥ 8192 activations) and on half the batch."""
    from gymnasium import spaces

    from rlgeom.models.policies import ActorCriticPolicy

    torch.manual_seed(5)
    action_space = spaces.Box(-1, 1, (3,)) if kind == "gaussian" else spaces.Discrete(4)
    policy = ActorCriticPolicy(spaces.Box(-5, 5, (11,)), action_space, **kw)
    inputs = 2 * torch.randn(1024, 11)
    products = []
    for written_out in (True, False):
        pf = PolicyFisher(policy.actor, policy.family, inputs, damping=0.0, subsample=0.5,
                          generator=torch.Generator().manual_seed(0), written_out=written_out)
        assert pf.fisher_inputs.shape[0] == 512
        with pf.linearised():
            products.append(pf.fvp(torch.ones(pf.num_parameters)))
    assert written_out_applies(policy.actor, inputs)
    assert_rel_close(*products)


def test_written_out_form_is_declined_where_it_would_not_be_the_actors_derivative():
    actor, family = policy_actor("gaussian")
    inputs = torch.randn(BATCH, 3, dtype=DTYPE)
    assert not written_out_applies(make_case("gaussian")[0], inputs)  # a module that does not offer it
    from rlgeom.models.policies import Actor

    class SquashedMeanActor(Actor):  # same layers, another function of them: not the plain MLP's Fisher
        def forward(self, x):
            out = super().forward(x)
            return torch.cat([torch.tanh(out[:, :2]), out[:, 2:]], dim=-1)

    actor.__class__ = SquashedMeanActor  # the same layers and parameters, another forward
    assert not written_out_applies(actor, inputs)
    actor.__class__ = Actor
    assert written_out_applies(actor, inputs)
    actor.body[0].bias.requires_grad_(False)  # a frozen parameter: autograd's form, over the trained ones
    assert not written_out_applies(actor, inputs)
    pf = PolicyFisher(actor, family, inputs, damping=0.0)
    v = torch.randn(pf.num_parameters, dtype=DTYPE)
    with pf.linearised():
        assert torch.isfinite(pf.fvp(v)).all()


@pytest.mark.parametrize("method", METHODS)
def test_linearisation_ends_with_its_block(method):
    """Inside the block F is the one at entry; after it, products follow the parameters again."""
    actor, family, inputs = make_case("gaussian")
    pf = PolicyFisher(actor, family, inputs, damping=0.0, method=method)
    v = torch.randn(pf.num_parameters, dtype=DTYPE)
    at_entry = explicit_fisher(actor, "gaussian", inputs) @ v
    with pf.linearised():
        assert_rel_close(pf.fvp(v), at_entry)
    perturb(actor)
    assert_rel_close(pf.fvp(v), explicit_fisher(actor, "gaussian", inputs) @ v)
    assert torch.linalg.vector_norm(pf.fvp(v) - at_entry) > 1e-3 * torch.linalg.vector_norm(at_entry)


@pytest.mark.parametrize("method", METHODS)
def test_damping_adds_lambda_v(method):
    actor, family, inputs = make_case("categorical")
    plain = PolicyFisher(actor, family, inputs, damping=0.0, method=method)
    damped = PolicyFisher(actor, family, inputs, damping=0.25, method=method)
    v = torch.randn(plain.num_parameters, dtype=DTYPE)
    torch.testing.assert_close(damped.fvp(v) - plain.fvp(v), 0.25 * v)
    torch.testing.assert_close(damped.quadratic_form(v), plain.quadratic_form(v))  # undamped


@pytest.mark.parametrize("method", METHODS)
def test_subsample_uses_a_fixed_subset(method):
    actor, family, inputs = make_case("gaussian", batch=10)
    pf = PolicyFisher(
        actor, family, inputs, damping=0.0, method=method, subsample=0.5,
        generator=torch.Generator().manual_seed(7),
    )
    idx = pf.fisher_indices
    assert idx.numel() == 5 and idx.unique().numel() == 5 and 0 <= idx.min() and idx.max() < 10
    again = PolicyFisher(actor, family, inputs, subsample=0.5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(again.fisher_indices, idx)
    v = torch.randn(pf.num_parameters, dtype=DTYPE)
    assert_rel_close(pf.fvp(v), explicit_fisher(actor, "gaussian", inputs[idx]) @ v)
    with pf.linearised():  # the retained graph is built on the same subsample
        assert_rel_close(pf.fvp(v), explicit_fisher(actor, "gaussian", inputs[idx]) @ v)
    full = explicit_fisher(actor, "gaussian", inputs) @ v
    assert torch.linalg.vector_norm(pf.fvp(v) - full) > 1e-3 * torch.linalg.vector_norm(full)
    assert pf.mean_kl().numel() == 1 and pf.kl().shape == (10,)  # KL stays on the whole batch


def test_global_rng_untouched_by_construction():
    actor, family, inputs = make_case("categorical")
    state = torch.get_rng_state()
    PolicyFisher(actor, family, inputs)
    PolicyFisher(actor, family, inputs, subsample=0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(torch.get_rng_state(), state)


def test_bad_arguments_name_what_is_accepted():
    actor, family, inputs = make_case("categorical")
    with pytest.raises(ValueError, match="gauss_newton, kl_hessian"):
        PolicyFisher(actor, family, inputs, method="exact")
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        PolicyFisher(actor, family, inputs, subsample=0.0)
    with pytest.raises(ValueError, match="entries"):
        PolicyFisher(actor, family, inputs).fvp(torch.zeros(3, dtype=DTYPE))


@pytest.mark.parametrize("kind", ["categorical", "gaussian"])
def test_quadratic_model_of_kl(kind):
    """KL(π_θ ‖ π_θ+εs) / (½ε² sᵀFs) → 1 as ε → 0, with an O(ε) error."""
    actor, family, inputs = make_case(kind)
    pf = PolicyFisher(actor, family, inputs, damping=0.0)
    params = pf.parameters
    old = flat_parameters(params)
    s = torch.randn(old.numel(), dtype=DTYPE)
    s /= torch.linalg.vector_norm(s)
    q = pf.quadratic_form(s)
    errors = []
    for eps in (1e-1, 1e-2, 1e-3):
        assign_flat_parameters(params, old + eps * s)
        errors.append(abs(float(pf.mean_kl().detach() / (0.5 * eps**2 * q)) - 1))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-2


# ---------------------------------------------------------------------------------------------
# conjugate gradient and the KL budget
# ---------------------------------------------------------------------------------------------


def random_spd(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=DTYPE))
    eigenvalues = torch.linspace(1.0, 10.0, n, dtype=DTYPE)
    return q @ torch.diag(eigenvalues) @ q.T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cg_matches_linalg_solve(seed):
    a = random_spd(20, seed)
    b = torch.randn(20, generator=torch.Generator().manual_seed(seed + 10), dtype=DTYPE)
    result = conjugate_gradient(lambda v: a @ v, b, max_iterations=60, residual_tolerance=1e-24)
    torch.testing.assert_close(result.solution, torch.linalg.solve(a, b), rtol=1e-9, atol=1e-10)
    assert 0 < result.iterations <= 60
    torch.testing.assert_close(result.residual_norm, torch.linalg.vector_norm(b - a @ result.solution))
    torch.testing.assert_close(result.product, a @ result.solution)


def test_cg_stops_at_max_iterations_and_reports_true_residual():
    a, b = random_spd(20, 3), torch.ones(20, dtype=DTYPE)
    result = conjugate_gradient(lambda v: a @ v, b, max_iterations=3, residual_tolerance=1e-30)
    assert result.iterations == 3
    true = torch.linalg.vector_norm(b - a @ result.solution)
    torch.testing.assert_close(result.residual_norm, true)
    assert true > 1e-3  # three iterations cannot solve a 20-dimensional system with spread spectrum


def test_cg_residual_is_the_true_one_not_the_recursive_estimate():
    """In float32 on an ill-conditioned system CG's recursive residual drifts far below the true
    ‖b − Ax‖ (which stalls near machine precision); the report must be the true one."""
    gen = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(20, 20, generator=gen, dtype=DTYPE))
    a = (q @ torch.diag(torch.logspace(0, 4, 20, dtype=DTYPE)) @ q.T).float()
    a = (a + a.T) / 2
    b = torch.randn(20, generator=gen)
    result = conjugate_gradient(lambda v: a @ v, b, max_iterations=200, residual_tolerance=0.0)
    true = torch.linalg.vector_norm(b - a @ result.solution)
    assert true > 1e-6  # far above where the recursive estimate ends up (~1e-15)
    torch.testing.assert_close(result.residual_norm, true)


def test_cg_stops_early_at_tolerance():
    a = 2.0 * torch.eye(20, dtype=DTYPE)  # one distinct eigenvalue: exact after one iteration
    b = torch.randn(20, dtype=DTYPE)
    result = conjugate_gradient(lambda v: a @ v, b, max_iterations=10)
    assert result.iterations == 1
    torch.testing.assert_close(result.solution, b / 2)


def test_cg_on_zero_right_hand_side():
    calls = []
    a = random_spd(5, 0)

    def matvec(v):
        calls.append(v)
        return a @ v

    result = conjugate_gradient(matvec, torch.zeros(5, dtype=DTYPE))
    assert torch.equal(result.solution, torch.zeros(5, dtype=DTYPE))
    assert result.iterations == 0 and float(result.residual_norm) == 0.0 and not calls


def test_cg_stops_on_zero_curvature_instead_of_dividing_by_it():
    """Undamped F can be singular; a direction with pᵀFp = 0 ends CG with the last finite iterate."""
    b = torch.ones(4, dtype=DTYPE)
    result = conjugate_gradient(torch.zeros_like, b)
    assert result.iterations == 0 and torch.equal(result.solution, torch.zeros_like(b))
    torch.testing.assert_close(result.residual_norm, torch.tensor(2.0, dtype=DTYPE))
    assert not natural_step(b, torch.zeros_like, 0.01).valid


def test_kl_scale_both_modes_and_invalid_quadratic_forms():
    torch.testing.assert_close(kl_scale(torch.tensor(4.0), 0.02), torch.tensor(0.1))
    torch.testing.assert_close(kl_scale(torch.tensor(0.01), 0.02), torch.tensor(2.0))
    torch.testing.assert_close(kl_scale(torch.tensor(0.01), 0.02, clip=True), torch.tensor(1.0))
    torch.testing.assert_close(kl_scale(torch.tensor(4.0), 0.02, clip=True), torch.tensor(0.1))
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        for clip in (False, True):
            scale = kl_scale(torch.tensor(bad), 0.02, clip=clip)
            assert isinstance(scale, torch.Tensor) and float(scale) == 0.0


# ---------------------------------------------------------------------------------------------
# the natural step
# ---------------------------------------------------------------------------------------------


def surrogate_gradient(pf: PolicyFisher, seed: int = 3):
    """g = ∇ E[π_θ(a|s)/π_old(a|s) · A] at θ_old, for fixed sampled actions and advantages."""
    gen = torch.Generator().manual_seed(seed)
    old = pf.old_distribution()
    torch.manual_seed(seed)
    actions = old.sample()
    advantages = torch.randn(pf.inputs.shape[0], generator=gen, dtype=DTYPE)

    def surrogate():
        ratio = torch.exp(pf.distribution().log_prob(actions) - old.log_prob(actions))
        return (ratio * advantages).mean()

    return flat_gradient(surrogate(), pf.parameters)


def test_natural_step_lands_on_the_kl_radius():
    actor, family, inputs = make_case("categorical", batch=16)
    pf = PolicyFisher(actor, family, inputs, damping=0.0)
    g = surrogate_gradient(pf)
    max_kl = 1e-5
    ns = natural_step(g, pf.fvp, max_kl, cg_iterations=10)
    assert ns.valid and ns.cg.iterations <= 10
    x = ns.direction
    torch.testing.assert_close(ns.quadratic_form, x @ pf.fvp(x))
    torch.testing.assert_close(ns.step, x * math.sqrt(2 * max_kl / float(x @ pf.fvp(x))))
    torch.testing.assert_close(ns.expected_improvement, g @ ns.step)
    assert ns.expected_improvement > 0
    assign_flat_parameters(pf.parameters, flat_parameters(pf.parameters) + ns.step)
    assert abs(float(pf.mean_kl().detach()) / max_kl - 1) < 0.02


def test_damped_natural_step_stays_inside_the_radius():
    actor, family, inputs = make_case("gaussian")
    pf = PolicyFisher(actor, family, inputs, damping=0.1)
    g = surrogate_gradient(pf)
    ns = natural_step(g, pf.fvp, 1e-5)
    assign_flat_parameters(pf.parameters, flat_parameters(pf.parameters) + ns.step)
    assert ns.valid and float(pf.mean_kl().detach()) < 1e-5


def test_natural_step_invalid_on_nan_or_zero_gradient():
    actor, family, inputs = make_case("gaussian")
    pf = PolicyFisher(actor, family, inputs)
    g = torch.ones(pf.num_parameters, dtype=DTYPE)
    g[3] = float("nan")
    for bad in (g, torch.zeros_like(g)):
        ns = natural_step(bad, pf.fvp, 0.01)
        assert not ns.valid
        assert torch.equal(ns.step, torch.zeros_like(bad))


class ScaleActor(nn.Module):
    """Linear mean, state-independent σ stored as σ, log σ or σ²; always outputs [mean, log σ]."""

    def __init__(self, parameterisation: str, sigma: float = 0.6):
        super().__init__()
        torch.manual_seed(11)  # identical mean weights in every parameterisation
        self.mean = nn.Linear(3, 1).to(DTYPE)
        self.parameterisation = parameterisation
        raw = {"std": sigma, "log_std": math.log(sigma), "var": sigma**2}[parameterisation]
        self.raw = nn.Parameter(torch.tensor([raw], dtype=DTYPE))

    def log_std(self):
        if self.parameterisation == "std":
            return torch.log(self.raw)
        if self.parameterisation == "var":
            return 0.5 * torch.log(self.raw)
        return self.raw

    def forward(self, x):
        mean = self.mean(x)
        return torch.cat([mean, self.log_std().expand_as(mean)], dim=-1)


def distribution_change(actor, inputs, step):
    """(Δmean [B], Δσ) after adding `step` to the actor's parameters."""
    params = list(actor.parameters())
    before = actor(inputs).detach()
    assign_flat_parameters(params, flat_parameters(params) + step)
    after = actor(inputs).detach()
    return after[:, 0] - before[:, 0], torch.exp(after[0, 1]) - torch.exp(before[0, 1])


def test_natural_step_is_invariant_to_the_scale_parameterisation():
    """σ, log σ and σ²: the natural step moves the distribution identically (to first order);
    a vanilla gradient step of the same Euclidean norm does not."""
    inputs = torch.randn(12, 3, generator=torch.Generator().manual_seed(5), dtype=DTYPE)
    natural, vanilla = {}, {}
    for name in ("std", "log_std", "var"):
        for kind, store in (("natural", natural), ("vanilla", vanilla)):
            actor = ScaleActor(name)
            pf = PolicyFisher(actor, DiagGaussianFamily(1), inputs, damping=0.0)
            g = surrogate_gradient(pf)  # same actions and advantages for every actor
            if kind == "natural":
                ns = natural_step(g, pf.fvp, max_kl=1e-10, cg_iterations=50, cg_tolerance=1e-40)
                assert ns.valid and ns.cg.residual_norm < 1e-10 * torch.linalg.vector_norm(g)
                step = ns.step
            else:
                step = 1e-5 * g / torch.linalg.vector_norm(g)
            store[name] = distribution_change(actor, inputs, step)
    ref_mean, ref_sigma = natural["log_std"]
    assert ref_sigma.abs() > 1e-8  # the step does move σ
    for name in ("std", "var"):
        assert_rel_close(natural[name][0], ref_mean, rel=1e-4)
        assert abs(float(natural[name][1] / ref_sigma) - 1) < 1e-4
    sigmas = [float(vanilla[n][1]) for n in ("std", "log_std", "var")]
    for i in range(3):
        for j in range(i + 1, 3):
            assert abs(sigmas[i] / sigmas[j] - 1) > 0.2, sigmas


# ---------------------------------------------------------------------------------------------
# the line search
# ---------------------------------------------------------------------------------------------


def quadratic_problem():
    """θ ∈ R², improvement = Σ(θ−θ₀) and KL = ½‖θ−θ₀‖² (exact, so fractions are predictable)."""
    theta = nn.Parameter(torch.tensor([0.1, -0.7], dtype=DTYPE))
    origin = theta.detach().clone()
    calls = []

    def evaluate():
        assert not torch.is_grad_enabled()
        d = theta - origin
        calls.append(d.clone())
        return d.sum(), 0.5 * (d @ d)

    return theta, origin, evaluate, calls


def test_line_search_accepts_full_step_within_kl():
    theta, origin, evaluate, calls = quadratic_problem()
    step = torch.tensor([0.1, 0.1], dtype=DTYPE)  # KL 0.01
    res = backtracking_line_search([theta], step, evaluate, max_kl=0.02, expected_improvement=0.2)
    assert res.accepted and res.step_fraction == 1.0 and res.backtracks == 0 and len(calls) == 1
    assert torch.equal(theta.detach(), origin + step)
    assert res.kl == pytest.approx(0.01) and res.improvement == pytest.approx(0.2)


def test_line_search_backtracks_until_kl_fits():
    theta, origin, evaluate, calls = quadratic_problem()
    step = torch.tensor([1.0, 1.0], dtype=DTYPE)  # KL(frac) = frac²: 1, 0.64, 0.4096, ...
    res = backtracking_line_search([theta], step, evaluate, max_kl=0.49, expected_improvement=2.0)
    assert res.accepted and res.backtracks == 2 and len(calls) == 3
    assert res.step_fraction == pytest.approx(0.64)
    torch.testing.assert_close(theta.detach(), origin + 0.64 * step)
    assert res.kl <= 0.49


def test_line_search_restores_parameters_bit_for_bit():
    actor, _, _ = make_case("gaussian")
    params = list(actor.parameters())
    before = [p.detach().clone() for p in params]
    step = torch.randn(flat_parameters(params).numel(), dtype=DTYPE) / 3  # awkward bits
    calls = []

    def evaluate():  # never improves
        calls.append(1)
        return torch.tensor(-1.0), torch.tensor(0.0)

    res = backtracking_line_search(params, step, evaluate, max_kl=0.01, expected_improvement=1.0, max_backtracks=4)
    assert not res.accepted and res.step_fraction == 0.0 and res.backtracks == 4 and len(calls) == 5
    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))


def test_line_search_rejects_non_finite_and_too_small_improvements():
    theta, origin, evaluate, _ = quadratic_problem()
    step = torch.tensor([0.1, 0.1], dtype=DTYPE)
    nan = lambda: (torch.tensor(float("nan")), torch.tensor(0.0))  # noqa: E731
    assert not backtracking_line_search([theta], step, nan, max_kl=1.0, expected_improvement=1.0).accepted
    assert torch.equal(theta.detach(), origin)
    # actual 0.2·frac against expected 1.0·frac: passes a 0.1 ratio, fails a 0.5 ratio at every fraction
    ok = backtracking_line_search([theta], step, evaluate, max_kl=1.0, expected_improvement=1.0, accept_ratio=0.1)
    assert ok.accepted and ok.backtracks == 0
    assign_flat_parameters([theta], origin)
    bad = backtracking_line_search([theta], step, evaluate, max_kl=1.0, expected_improvement=1.0, accept_ratio=0.5)
    assert not bad.accepted and torch.equal(theta.detach(), origin)
