"""The policy's Fisher spectrum, the value loss's Hessian spectrum, and sharpness.

Everything here works from matrix-vector products; no d × d matrix is ever built.

| quantity                         | definition                                                       |
|----------------------------------|------------------------------------------------------------------|
| top-k eigenpairs (λ_i, u_i)      | Lanczos (ARPACK's implicitly restarted Lanczos, scipy eigsh) on  |
|                                  | v ↦ F v; float64 at the scipy boundary, the model's dtype inside |
| trace (Hutchinson 1989)          | tr F ≈ (1/m) Σ_j z_jᵀ F z_j, z_j Rademacher from a fixed seed    |
| effective condition number       | κ_eff = λ_max / (tr F / d) = λ_max·d / tr F: the top eigenvalue  |
|                                  | over the *mean* eigenvalue. 1 for an isotropic metric, d when F  |
|                                  | is rank one. Unlike λ_max/λ_min it stays finite for the (always) |
|                                  | rank-deficient policy Fisher. `geometry/fisher_top_over_trace`   |
|                                  | logs λ_max / tr F = κ_eff / d, the share of the top direction.   |
| gradient top-k share             | ‖P_k g‖² / ‖g‖², P_k = U_k U_kᵀ the projector on the top-k       |
|                                  | eigenvectors, g = ∇θ of the surrogate E[π_θ/π_old · Â]           |
| value Hessian                    | ∇²_φ MSE(V_φ(s), R) on the critic's parameters φ, by double      |
|                                  | backprop (Hessian-vector products); indefinite in general: "top" |
|                                  | is the largest algebraic eigenvalue                              |
| random-direction sharpness       | f(θ + ε·d) − f(θ) over filter-normalised random directions d     |
|                                  | (Li et al. 2018), f the surrogate or the mean KL on one batch    |

Filter normalisation (Li et al., NeurIPS 2018, section 4): a Gaussian direction is rescaled filter
by filter, a filter being one slice along dim 0 of a ≥ 2-D parameter (a row of a Linear weight
[out, in], an output channel of a Conv2d weight [out, in, kh, kw]), to the norm of the same filter
of the model: ‖d_i‖ = ‖θ_i‖. 1-D parameters (biases, the Gaussian's log σ) are zeroed by default
(`one_d="zero"`, Li et al.'s choice for biases and batch-norm parameters); `one_d="scale"` instead
treats a whole 1-D parameter as one filter (‖d_b‖ = ‖θ_b‖, so a zero-initialised bias stays put).

Determinism: every random draw uses a torch.Generator passed in (or a fixed seed), and eigsh gets
an explicit start vector, so the global RNGs of torch, numpy and random are never touched: an agent
trained with `geometry_every` set follows bit for bit the same trajectory as without.

Cost of `training_geometry` (the `geometry_every` hook) for the default 64-64 tanh MLP on a
Hopper-sized task (11 observations, 3 actions: 5,126 actor and 4,993 critic parameters) at a batch
of 2048, k = 5, 10 Hutchinson probes, tol 1e-3, float32 on CPU (torch 2.13, one thread): about
0.5–0.65 s of CPU time per call (1.9 s wall on the shared, loaded 2-core development machine).
It is ~90 matrix-vector products: Fisher Lanczos 32 (~6 ms each, Gauss-Newton form; the KL-Hessian
form was ~8 ms), Fisher trace 10, value-Hessian Lanczos 35 (~5 ms each), its trace 10, and one
surrogate gradient. For scale, on the same machine and batch one TRPO update took 0.26 s of CPU and
one PPO update (10 epochs of 64-minibatches) 0.40 s: `geometry_every=10` adds roughly 10–20 % to
the update time, less to the whole run (environment steps are not counted here).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh
from torch import nn

from rlgeom.geometry.fisher import PolicyFisher, surrogate_advantage
from rlgeom.models.parameters import assign_flat_parameters, flat_gradient, flat_parameters

Matvec = Callable[[torch.Tensor], torch.Tensor]

#: the seed of the generator used when none is given (Hutchinson probes, Lanczos start vector)
DEFAULT_SEED = 0
ONE_D_MODES = ("zero", "scale")


# ---------------------------------------------------------------------------------------------
# eigenpairs and traces from matrix-vector products
# ---------------------------------------------------------------------------------------------


@dataclass
class Spectrum:
    """Top-k eigenpairs (descending) and a trace estimate of a symmetric operator of size d.

    eigenvalues [k] and eigenvectors [d, k] (orthonormal columns) are torch tensors in the
    operator's dtype and device; trace is a float (NaN when not estimated); products counts the
    operator applications spent on the eigenpairs.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    trace: float
    dim: int
    products: int = 0

    @property
    def top(self) -> float:
        return float(self.eigenvalues[0])

    @property
    def top_over_trace(self) -> float:
        """λ_max / tr: the share of the total curvature in the top direction."""
        return self.top / self.trace if self.trace != 0 else float("nan")

    @property
    def effective_condition_number(self) -> float:
        """κ_eff = λ_max / (tr / d) = λ_max·d / tr (see the module docstring)."""
        return effective_condition_number(self.top, self.trace, self.dim)


def effective_condition_number(top: float, trace: float, dim: int) -> float:
    """λ_max / mean eigenvalue = λ_max·d / tr: 1 for an isotropic metric, d for a rank-one one."""
    return top * dim / trace if trace != 0 else float("nan")


def top_eigenpairs(
    matvec: Matvec,
    dim: int,
    k: int = 5,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    tol: float = 1e-4,
    max_iterations: int | None = None,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(eigenvalues [k] descending, eigenvectors [dim, k], products used) of a symmetric operator.

    Lanczos by scipy.sparse.linalg.eigsh (ARPACK) over a LinearOperator: scipy sees float64
    vectors, `matvec` sees 1-D tensors of `dtype` on `device`. "Top" is the largest *algebraic*
    eigenvalue (which="LA"), which for a PSD operator like the Fisher is the largest in size.
    The start vector is drawn from `generator` (seed DEFAULT_SEED if None), so the result is
    deterministic. `tol` is ARPACK's relative accuracy of the Ritz values; keep it ≥ 1e-5 for
    float32 products, whose rounding ARPACK would otherwise chase. Operators too small for
    Lanczos (k ≥ dim − 1) are built column by column and solved by torch.linalg.eigh.
    """
    if not isinstance(k, int) or k < 1 or k > dim:
        raise ValueError(f"k must be an integer in [1, {dim}] (the operator's size), got {k!r}")
    calls = [0]

    def apply(x: np.ndarray) -> np.ndarray:
        calls[0] += 1
        v = torch.as_tensor(np.ascontiguousarray(x, dtype=np.float64).reshape(-1)).to(device=device, dtype=dtype)
        return matvec(v).detach().to("cpu", torch.float64).numpy()

    if k >= dim - 1:  # ARPACK needs k < dim - 1 for a symmetric problem: exact dense solve instead
        columns = [apply(col) for col in np.eye(dim)]
        dense = torch.as_tensor(np.stack(columns, axis=1))
        dense = 0.5 * (dense + dense.T)
        values, vectors = torch.linalg.eigh(dense)
        values, vectors = values.flip(0)[:k], vectors.flip(1)[:, :k]
    else:
        gen = generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)
        v0 = torch.randn(dim, generator=gen, dtype=torch.float64, device=gen.device).cpu().numpy()
        operator = LinearOperator((dim, dim), matvec=apply, dtype=np.float64)
        try:
            values_np, vectors_np = eigsh(operator, k=k, which="LA", v0=v0, tol=tol, maxiter=max_iterations)
        except ArpackNoConvergence as err:  # keep what did converge; never silently return nothing
            if len(err.eigenvalues) == 0:
                raise RuntimeError(f"Lanczos found no converged eigenvalue of the {dim}-dim operator: {err}") from None
            values_np, vectors_np = err.eigenvalues, err.eigenvectors
        order = np.argsort(values_np)[::-1]
        values = torch.as_tensor(values_np[order].copy())
        vectors = torch.as_tensor(vectors_np[:, order].copy())
    return values.to(device=device, dtype=dtype), vectors.to(device=device, dtype=dtype), calls[0]


def hutchinson_trace(
    matvec: Matvec,
    dim: int,
    n_probes: int = 10,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> float:
    """tr A ≈ (1/m) Σ_j z_jᵀ A z_j with m Rademacher probes z_j ∈ {−1, +1}^d (Hutchinson 1989).

    Unbiased, with variance 2(‖A‖_F² − Σ_i A_ii²)/m. Probes are drawn on the CPU from `generator`
    (seed DEFAULT_SEED if None), so the estimate is the same on every device.
    """
    if not isinstance(n_probes, int) or n_probes < 1:
        raise ValueError(f"n_probes must be a positive integer, got {n_probes!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)
    total = torch.zeros((), dtype=torch.float64)
    for _ in range(n_probes):
        z = torch.randint(0, 2, (dim,), generator=gen, device=gen.device).to(torch.float64).mul_(2).sub_(1)
        z = z.to(device=device, dtype=dtype)
        total += torch.dot(z, matvec(z)).detach().to("cpu", torch.float64)
    return float(total / n_probes)


def operator_spectrum(
    matvec, num_parameters: int, like: torch.Tensor, k: int = 5, n_probes: int = 10, *,
    tol: float = 1e-4, generator: torch.Generator | None = None,
) -> Spectrum:
    """Top-k eigenpairs (Lanczos) and Hutchinson trace of a symmetric operator on flat parameters."""
    gen = generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)
    opts = dict(dtype=like.dtype, device=like.device)
    values, vectors, products = top_eigenpairs(matvec, num_parameters, k, tol=tol, generator=gen, **opts)
    trace = hutchinson_trace(matvec, num_parameters, n_probes, generator=gen, **opts)
    return Spectrum(values, vectors, trace, num_parameters, products)


def fisher_spectrum(
    fisher: PolicyFisher,
    k: int = 5,
    n_probes: int = 10,
    *,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> Spectrum:
    """Top-k eigenpairs and Hutchinson trace of the (undamped) policy Fisher F of `fisher`."""
    with fisher.linearised():  # θ is fixed during Lanczos and the probes: one forward for every product
        return operator_spectrum(fisher.fisher_product, fisher.num_parameters, fisher.parameters[0], k, n_probes,
                                 tol=tol, generator=generator)


class ValueLossHessian:
    """Hessian-vector products of the value loss MSE(V_φ(s), R) in the critic's parameters φ.

    H v = ∇_φ (vᵀ ∇_φ L) by double backprop, on a fixed batch of critic inputs (already
    normalised, like `PolicyFisher`'s) and regression targets.
    """

    def __init__(self, critic: nn.Module, inputs: torch.Tensor, returns: torch.Tensor):
        self.critic, self.inputs, self.returns = critic, inputs, returns
        self.parameters = [p for p in critic.parameters() if p.requires_grad]
        self.num_parameters = sum(p.numel() for p in self.parameters)

    def loss(self) -> torch.Tensor:
        return torch.nn.functional.mse_loss(self.critic(self.inputs).reshape(self.returns.shape), self.returns)

    def product(self, v: torch.Tensor) -> torch.Tensor:
        """H v for a flat v [d_critic]."""
        grad = flat_gradient(self.loss(), self.parameters, create_graph=True)
        return flat_gradient(torch.dot(grad, v.detach()), self.parameters).detach()


def value_hessian_spectrum(
    hessian: ValueLossHessian,
    k: int = 5,
    n_probes: int = 10,
    *,
    tol: float = 1e-4,
    generator: torch.Generator | None = None,
) -> Spectrum:
    """Top-k (largest algebraic) eigenpairs and Hutchinson trace of the value-loss Hessian."""
    return operator_spectrum(hessian.product, hessian.num_parameters, hessian.parameters[0], k, n_probes,
                             tol=tol, generator=generator)


def gradient_top_k_share(gradient: torch.Tensor, eigenvectors: torch.Tensor) -> float:
    """‖P_k g‖² / ‖g‖² with P_k = U Uᵀ, U [d, k] orthonormal eigenvectors; NaN when g = 0."""
    norm2 = torch.dot(gradient, gradient)
    if not bool(norm2 > 0):
        return float("nan")
    coefficients = eigenvectors.T @ gradient
    return float(torch.dot(coefficients, coefficients) / norm2)


# ---------------------------------------------------------------------------------------------
# objectives on a fixed batch
# ---------------------------------------------------------------------------------------------


def surrogate_objective(policy, obs: torch.Tensor, actions: torch.Tensor, old_log_probs: torch.Tensor,
                        advantages: torch.Tensor) -> torch.Tensor:
    """L(θ) = E[π_θ(a|s) / π_old(a|s) · Â] on a fixed batch (differentiable in the actor).

    At θ = θ_old its gradient is the policy gradient E[∇ log π · Â] (Kakade & Langford 2002).
    """
    return surrogate_advantage(policy.family.log_prob(policy.dist_params(obs), actions), old_log_probs, advantages)


def surrogate_gradient(policy, obs, actions, old_log_probs, advantages) -> torch.Tensor:
    """g = ∇_θ L(θ) over the actor's parameters, flat."""
    params = [p for p in policy.actor.parameters() if p.requires_grad]
    return flat_gradient(surrogate_objective(policy, obs, actions, old_log_probs, advantages), params).detach()


def training_geometry(
    policy,
    buffer,
    normalize_advantage: bool = True,
    k: int = 5,
    n_probes: int = 10,
    max_samples: int | None = None,
    tol: float = 1e-3,
    fvp_method: str = "gauss_newton",
) -> dict[str, float]:
    """The `geometry/` record an agent logs every `geometry_every` updates, from its last rollout.

    Fisher and value Hessian at the current parameters on the rollout's states (at most
    `max_samples` of them, evenly strided, if given); g is the surrogate's gradient with the
    rollout's log-probabilities as π_old. Uses its own fixed-seed generator: the agent's RNG
    streams are untouched. `fvp_method` is PolicyFisher's product method ("gauss_newton" or
    "kl_hessian"; equal in exact arithmetic, similar in cost on CPU).
    """
    batch = buffer.full_batch(normalize_advantage)
    obs, actions, old_log_probs, advantages, returns = (
        batch.obs, batch.actions, batch.old_log_probs, batch.advantages, batch.returns
    )
    if max_samples is not None and len(batch) > max_samples:
        idx = torch.linspace(0, len(batch) - 1, max_samples, device=obs.device).long()
        obs, actions, old_log_probs, advantages, returns = (
            t[idx] for t in (obs, actions, old_log_probs, advantages, returns)
        )
    inputs = policy.actor_inputs(obs)
    fisher = PolicyFisher(policy.actor, policy.family, inputs.detach(), damping=0.0, method=fvp_method)
    k_actor = min(k, fisher.num_parameters)
    f_spec = fisher_spectrum(fisher, k_actor, n_probes, tol=tol)
    g = surrogate_gradient(policy, obs, actions, old_log_probs, advantages)
    hessian = ValueLossHessian(policy.critic, inputs.detach(), returns)
    v_spec = value_hessian_spectrum(hessian, min(k, hessian.num_parameters), n_probes, tol=tol)
    return {
        "geometry/fisher_top_eigenvalue": f_spec.top,
        "geometry/fisher_trace": f_spec.trace,
        "geometry/fisher_top_over_trace": f_spec.top_over_trace,
        "geometry/gradient_top_k_share": gradient_top_k_share(g, f_spec.eigenvectors),
        "geometry/value_hessian_top_eigenvalue": v_spec.top,
        "geometry/value_hessian_trace": v_spec.trace,
    }


# ---------------------------------------------------------------------------------------------
# filter-normalised directions and sharpness
# ---------------------------------------------------------------------------------------------


def filter_normalized_direction(
    params: Sequence[torch.Tensor],
    generator: torch.Generator,
    one_d: str = "zero",
) -> torch.Tensor:
    """A flat Gaussian direction (in `flat_parameters(params)` order), normalised filter by filter.

    For a ≥ 2-D parameter each slice along dim 0 (Linear row, Conv2d output channel) gets the norm
    of the same slice of the parameter; 1-D parameters are zeroed (`one_d="zero"`) or scaled as one
    filter (`one_d="scale"`). Drawn on the CPU from `generator`, returned on the parameters' device.
    """
    if one_d not in ONE_D_MODES:
        raise ValueError(f"unknown one_d mode {one_d!r}; accepted: {', '.join(ONE_D_MODES)}")
    chunks = []
    for p in params:
        theta = p.detach()
        d = torch.randn(theta.shape, generator=generator, dtype=torch.float64, device=generator.device)
        d = d.to(device=theta.device, dtype=theta.dtype)
        if theta.dim() <= 1:
            if one_d == "zero":
                d = torch.zeros_like(theta)
            else:
                d = d * (torch.linalg.vector_norm(theta) / torch.linalg.vector_norm(d).clamp_min(1e-12))
        else:
            filters, model_filters = d.reshape(d.shape[0], -1), theta.reshape(theta.shape[0], -1)
            scale = model_filters.norm(dim=1) / filters.norm(dim=1).clamp_min(1e-12)
            d = (filters * scale[:, None]).reshape(theta.shape)
        chunks.append(d.reshape(-1))
    return torch.cat(chunks)


@dataclass
class SharpnessResult:
    """Changes Δ_j = f(θ + ε·d_j) − f(θ) of an objective over random directions d_j.

    `deltas` holds every Δ_j; mean/std/max/quantiles summarise them (quantiles at 5/25/50/75/95 %).
    """

    epsilon: float
    base_value: float
    deltas: np.ndarray
    quantiles: dict[str, float] = field(default_factory=dict)

    @property
    def mean(self) -> float:
        return float(np.mean(self.deltas))

    @property
    def std(self) -> float:
        return float(np.std(self.deltas))

    @property
    def max(self) -> float:
        return float(np.max(self.deltas))

    def summary(self) -> dict[str, float]:
        return {"epsilon": self.epsilon, "base": self.base_value, "mean": self.mean, "std": self.std,
                "max": self.max, "min": float(np.min(self.deltas)), **self.quantiles}


@torch.no_grad()
def random_direction_sharpness(
    objective: Callable[[], torch.Tensor | float],
    params: Sequence[torch.Tensor],
    epsilon: float = 0.05,
    n_directions: int = 50,
    *,
    generator: torch.Generator | None = None,
    one_d: str = "zero",
) -> SharpnessResult:
    """Distribution of f(θ + ε·d) − f(θ) over `n_directions` filter-normalised random d.

    `objective()` evaluates f at the parameters currently in `params` (e.g. the surrogate on a
    fixed batch, or `PolicyFisher.mean_kl`). θ is restored bit for bit afterwards. With filter
    normalisation ε is relative: each filter moves by ε times its own norm.
    """
    if not isinstance(n_directions, int) or n_directions < 1:
        raise ValueError(f"n_directions must be a positive integer, got {n_directions!r}")
    gen = generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)
    theta = flat_parameters(params)
    base = float(objective())
    deltas = []
    try:
        for _ in range(n_directions):
            d = filter_normalized_direction(params, gen, one_d)
            assign_flat_parameters(params, theta + epsilon * d)
            deltas.append(float(objective()) - base)
    finally:
        assign_flat_parameters(params, theta)
    arr = np.asarray(deltas)
    quantiles = {f"q{q:02d}": float(np.quantile(arr, q / 100)) for q in (5, 25, 50, 75, 95)}
    return SharpnessResult(float(epsilon), base, arr, quantiles)


def policy_sharpness(
    policy,
    obs: torch.Tensor,
    actions: torch.Tensor,
    old_log_probs: torch.Tensor,
    advantages: torch.Tensor,
    epsilon: float = 0.05,
    n_directions: int = 50,
    k: int = 5,
    generator: torch.Generator | None = None,
) -> dict:
    """Sharpness of a trained policy on one batch: the Fisher's top eigenvalue and trace, and the
    random-direction sharpness of the surrogate and of the mean KL(π_θ ‖ π_θ+ε·d)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(DEFAULT_SEED)
    params = [p for p in policy.actor.parameters() if p.requires_grad]
    fisher = PolicyFisher(policy.actor, policy.family, policy.actor_inputs(obs).detach(), damping=0.0)
    spec = fisher_spectrum(fisher, min(k, fisher.num_parameters), generator=gen)
    surrogate = random_direction_sharpness(
        lambda: surrogate_objective(policy, obs, actions, old_log_probs, advantages), params, epsilon,
        n_directions, generator=torch.Generator().manual_seed(int(torch.randint(2**31, (1,), generator=gen))),
    )
    kl = random_direction_sharpness(
        fisher.mean_kl, params, epsilon, n_directions,
        generator=torch.Generator().manual_seed(int(torch.randint(2**31, (1,), generator=gen))),
    )
    return {
        "fisher_top_eigenvalues": spec.eigenvalues.tolist(), "fisher_trace": spec.trace,
        "effective_condition_number": spec.effective_condition_number, "num_parameters": spec.dim,
        "surrogate": surrogate.summary(), "mean_kl": kl.summary(),
    }


__all__ = [
    "Spectrum", "SharpnessResult", "ValueLossHessian", "effective_condition_number", "filter_normalized_direction",
    "fisher_spectrum", "gradient_top_k_share", "hutchinson_trace", "policy_sharpness", "random_direction_sharpness",
    "surrogate_gradient", "surrogate_objective", "top_eigenpairs", "training_geometry", "value_hessian_spectrum",
]
