"""The policy's Fisher metric: KL, Fisher-vector products, conjugate gradient, natural step, line search.

The one home of this mathematics; NPG, TRPO and ACKTR call it, none re-implements it.

| symbol | meaning                                              | shape / type             |
|--------|------------------------------------------------------|--------------------------|
| θ      | trainable actor parameters, flattened                | [d]                      |
| x      | actor inputs (normalised observations)               | [B, *obs]                |
| φ(θ)   | distribution parameters, `actor(x)`                  | [B, P]                   |
| J      | ∂φ_i/∂θ for sample i                                 | [P, d] per sample        |
| F_dist | Fisher of the action distribution on φ (the family)  | [P, P] per sample        |
| F      | policy Fisher E_i[J_iᵀ F_dist(φ_i) J_i]              | [d, d], never built      |
| KL     | always KL(π_old ‖ π_new), mean over the batch        | scalar                   |

Locally KL(π_θ ‖ π_θ+ε) = ½ εᵀFε + O(ε³), so F⁻¹g is steepest ascent per unit of KL (Kakade 2001);
a direction x with q = xᵀFx is scaled to KL radius δ by √(2δ/q) (Schulman et al. 2015, appendix C).

Costs, for d parameters and a batch of B (or the subsample used for products):
- `PolicyFisher.fvp`: "gauss_newton" is the one product F v = Jᵀ F_dist J v, with J v and Jᵀ u from
  the network's linearisation (rlgeom.models.networks.linearise: written out for plain MLPs, torch.func for
  any other module; this module never looks at the actor's layers or parameter layout). "kl_hessian"
  (one forward + a double backward of the KL) stays as the independent check. Neither loops over
  samples or builds F. Inside `with fisher.linearised():` (θ held fixed, as during a CG solve) the
  linearisation, or the KL's first backward, is built once and reused by every product
  (experiments/RESULTS_trpo.md, sections 6b and 6d, for what that saves).
- `conjugate_gradient`: one matvec per iteration plus one for the true final residual (whose
  product A·x `natural_step` reuses for xᵀAx, so a natural step costs iterations + 1 products).
- Host syncs: one per CG iteration (early stop), one per line-search trial (acceptance), one for
  `NaturalStep.valid`; none with `syncless=True` (the compiled path: fixed iteration and trial counts,
  device-side masks, tested against the plain path). `kl_scale` itself never syncs.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch
from torch import nn
from torch.distributions import kl_divergence

from rlgeom.models.distributions import ActionDistribution
from rlgeom.models.networks import linearise
from rlgeom.models.parameters import assign_flat_parameters, flat_gradient, flat_parameters, unflatten
from rlgeom.training import distributed

FVP_METHODS = ("gauss_newton", "kl_hessian")


# ---------------------------------------------------------------------------------------------
# KL and the policy Fisher
# ---------------------------------------------------------------------------------------------


def policy_kl(family: ActionDistribution, old_params: torch.Tensor, new_params: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(π_old ‖ π_new) [B] from distribution parameters: the one place KL is written."""
    return kl_divergence(family.distribution(old_params), family.distribution(new_params))


def approximate_kl(log_ratio: torch.Tensor) -> torch.Tensor:
    """E[(r − 1) − log r], r = π_θ(a|s) / π_old(a|s) for a ~ π_old: an unbiased, non-negative sample
    estimate of KL(π_old ‖ π_θ) from log-ratios alone (Schulman, "Approximating KL divergence"; SB3's
    approx_kl). The agents' train/approx_kl."""
    return ((log_ratio.exp() - 1) - log_ratio).mean()


def surrogate_advantage(log_probs: torch.Tensor, old_log_probs: torch.Tensor, advantages: torch.Tensor) -> torch.Tensor:
    """L(θ) = E[π_θ(a|s) / π_old(a|s) · Â] from log-probabilities: TRPO's surrogate, the objective of
    the natural step and the line search (its gradient at θ_old is the policy gradient)."""
    return (torch.exp(log_probs - old_log_probs) * advantages).mean()


class PolicyFisher:
    """KL, entropy and Fisher-vector products of a policy on one batch of inputs.

    On construction it snapshots φ_old = actor(x) (detached) and the trainable actor parameters;
    KL is always against that snapshot. Fisher products use the actor's parameters as they are when
    called (F at the *current* θ), averaged over a subsample of the batch fixed at construction
    (Schulman et al. 2015, appendix C: products on ~10% of the batch are nearly as good and cheaper).

    Args:
        actor: module mapping inputs [B, ...] to distribution parameters [B, P].
        family: the action-distribution family that reads those parameters.
        inputs: the actor's inputs for the batch.
        damping: λ in (F + λI)v; ≥ 0.
        method: "gauss_newton" (Jᵀ F_dist J v: forward-mode then reverse-mode) or "kl_hessian"
            (Hessian-vector product of KL(π_θ̄ ‖ π_θ), θ̄ = θ detached, by double backprop). Equal
            in exact arithmetic: the KL's gradient vanishes at θ̄ = θ, leaving JᵀF_dist J.
        subsample: fraction of the batch used for products, in (0, 1].
        generator: drives the subsample draw; the global RNG is never touched when subsample == 1.
        written_out: let rlgeom.models.networks use the written-out Jacobian products of a plain MLP actor
            (the same numbers as torch.func's, faster on a CPU).
    """

    def __init__(
        self,
        actor: nn.Module,
        family: ActionDistribution,
        inputs: torch.Tensor,
        *,
        damping: float = 0.1,
        method: str = "gauss_newton",
        subsample: float = 1.0,
        generator: torch.Generator | None = None,
        written_out: bool = True,
    ):
        if method not in FVP_METHODS:
            raise ValueError(f"unknown Fisher-vector product method {method!r}; accepted: {', '.join(FVP_METHODS)}")
        if not 0.0 < subsample <= 1.0:
            raise ValueError(f"subsample must be a fraction in (0, 1], got {subsample}")
        if damping < 0:
            raise ValueError(f"damping must be >= 0, got {damping}")
        self.actor, self.family, self.inputs = actor, family, inputs
        self.damping, self.method, self.subsample = float(damping), method, float(subsample)
        self.written_out = written_out
        self.parameters = [p for p in actor.parameters() if p.requires_grad]
        self.num_parameters = sum(p.numel() for p in self.parameters)
        with torch.no_grad():
            self.old_dist_params = actor(inputs).detach()
        self.fisher_indices = self._draw_subsample(inputs.shape[0], generator)
        self.fisher_inputs = inputs if self.fisher_indices is None else inputs[self.fisher_indices]
        self._linearised_product: Callable | None = None  # set only inside `linearised()`

    def _draw_subsample(self, batch: int, generator: torch.Generator | None) -> torch.Tensor | None:
        """Indices of the samples used for products (None: the whole batch, no RNG consumed)."""
        if self.subsample >= 1.0:
            return None
        n = max(1, int(round(self.subsample * batch)))
        device = generator.device if generator is not None else self.inputs.device
        perm = torch.randperm(batch, generator=generator, device=device)
        return perm[:n].sort().values.to(self.inputs.device)

    # --- KL and entropy (full batch, differentiable in the actor's parameters) -----------------

    def distribution(self) -> torch.distributions.Distribution:
        """π_θ on the batch at the actor's current parameters (differentiable)."""
        return self.family.distribution(self.actor(self.inputs))

    def old_distribution(self) -> torch.distributions.Distribution:
        """π_old on the batch (the snapshot taken at construction)."""
        return self.family.distribution(self.old_dist_params)

    def kl(self, current_dist_params: torch.Tensor | None = None) -> torch.Tensor:
        """Per-sample KL(π_old ‖ π_θ) [B]; pass `current_dist_params` = actor(inputs) to reuse a forward."""
        current = self.actor(self.inputs) if current_dist_params is None else current_dist_params
        return policy_kl(self.family, self.old_dist_params, current)

    def mean_kl(self, current_dist_params: torch.Tensor | None = None) -> torch.Tensor:
        """E_batch KL(π_old ‖ π_θ), the trust-region quantity of TRPO (under torchrun, over every rank's
        batch: a value, without autograd history, as the line search reads it)."""
        return distributed.mean(self.kl(current_dist_params).mean())

    def max_kl(self, current_dist_params: torch.Tensor | None = None) -> torch.Tensor:
        """max_batch KL(π_old ‖ π_θ) (over every rank's batch under torchrun)."""
        return distributed.maximum(self.kl(current_dist_params).max())

    def entropy(self, current_dist_params: torch.Tensor | None = None) -> torch.Tensor:
        """Mean entropy of π_θ over the batch (every rank's under torchrun)."""
        current = self.actor(self.inputs) if current_dist_params is None else current_dist_params
        return distributed.mean(self.family.entropy(current).mean())

    # --- Fisher-vector products ----------------------------------------------------------------

    def fvp(self, v: torch.Tensor) -> torch.Tensor:
        """(F + λI) v for a flat v [d], F at the current parameters over the (sub)sampled batch."""
        return self.fisher_product(v) + self.damping * v

    def quadratic_form(self, v: torch.Tensor) -> torch.Tensor:
        """vᵀ F v (undamped): twice the KL the quadratic model predicts for a step v."""
        return torch.dot(v, self.fisher_product(v))

    def fisher_product(self, v: torch.Tensor) -> torch.Tensor:
        """F v (undamped) by the configured method; under torchrun the mean over ranks, so CG runs on
        the Fisher of every rank's batch, identically on each."""
        tangents = unflatten(v.detach(), self.parameters)  # also checks v's size
        if self._linearised_product is not None:
            product = self._linearised_product(v.detach(), tangents)
        elif self.method == "gauss_newton":
            product = self._gauss_newton_linearisation()(v.detach(), tangents)
        else:
            product = self._kl_hessian_product(v.detach())
        return distributed.mean(product)

    @contextmanager
    def linearised(self) -> Iterator["PolicyFisher"]:
        """Within the block, Fisher products reuse one forward pass (and its graph) at the current θ.

        The caller promises not to change the actor's parameters inside the block (a CG solve or a
        Lanczos run only reads them). A change is not detected: the products keep F at entry.
        Outside the block every product re-reads the parameters.
        gauss_newton: the actor is linearised once (rlgeom.models.networks.linearise: J v and Jᵀ u written
        out for plain MLPs, torch.func for any other module) and each product is Jᵀ F_dist J v.
        kl_hessian: ∇KL is built once with its graph; each product differentiates ∇KLᵀv.
        """
        if self._linearised_product is not None:  # nested: the outer block's linearisation is still valid
            yield self
            return
        with torch.enable_grad():
            self._linearised_product = (self._gauss_newton_linearisation() if self.method == "gauss_newton"
                                        else self._kl_hessian_linearisation())
        try:
            yield self
        finally:
            self._linearised_product = None  # frees the retained graph

    def _gauss_newton_linearisation(self) -> Callable:
        """v ↦ E_i[J_iᵀ F_dist(φ_i) J_i v]: J v and Jᵀ(·) from the network (rlgeom.models.networks), F_dist from
        the family, at the parameters of this call."""
        lin = linearise(self.actor, self.fisher_inputs, self.written_out)
        position = {id(p): i for i, p in enumerate(self.parameters)}
        order = [position.get(id(p)) for p in lin.parameters]
        if None in order or len(order) != len(self.parameters):
            raise ValueError("the actor's linearisation covers other parameters than its trainable ones")
        batch = lin.output.shape[0]

        def product(v: torch.Tensor, tangents: tuple[torch.Tensor, ...]) -> torch.Tensor:
            if not self.parameters:  # nothing to train: F = 0
                return torch.zeros_like(v)
            jv = lin.jvp([tangents[i] for i in order])
            f_jv = self.family.fisher_product(lin.output, jv) / batch  # batch mean
            grads: list = [None] * len(order)
            for i, g in zip(order, lin.vjp(f_jv)):
                grads[i] = g
            return flat_gradient(grads, self.parameters).detach()

        return product

    def _kl_hessian_linearisation(self) -> Callable:
        params = self.parameters
        phi = self.actor(self.fisher_inputs)
        kl = policy_kl(self.family, phi.detach(), phi).mean()
        grad = flat_gradient(kl, params, create_graph=True)

        def product(v: torch.Tensor, tangents: tuple[torch.Tensor, ...]) -> torch.Tensor:
            if not grad.requires_grad:  # no parameter reaches the output: F = 0
                return torch.zeros_like(v)
            with torch.enable_grad():
                grads = torch.autograd.grad(torch.dot(grad, v), params, retain_graph=True, allow_unused=True)
            return flat_gradient(grads, params).detach()

        return product

    def _kl_hessian_product(self, v: torch.Tensor) -> torch.Tensor:
        """∇_θ (vᵀ ∇_θ KL(π_θ̄ ‖ π_θ)) at θ̄ = θ: the Hessian of the KL times v, by double backprop."""
        with torch.enable_grad():  # also callable from no_grad code (telemetry, line searches)
            return self._kl_hessian_linearisation()(v, ())


# ---------------------------------------------------------------------------------------------
# conjugate gradient, the KL budget and the natural step
# ---------------------------------------------------------------------------------------------


@dataclass
class CGResult:
    """Outcome of `conjugate_gradient`.

    solution: x ≈ A⁻¹b. iterations: CG iterations that moved x (≤ max_iterations; a 0-dim tensor when
    syncless). residual_norm: the true ‖b − A x‖ (recomputed, not CG's recursive estimate), a 0-dim
    tensor. product: A x, computed once for that residual and reused by `natural_step` for xᵀAx.
    """

    solution: torch.Tensor
    iterations: int | torch.Tensor
    residual_norm: torch.Tensor
    product: torch.Tensor


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    b: torch.Tensor,
    max_iterations: int = 10,
    residual_tolerance: float = 1e-10,
    syncless: bool = False,
) -> CGResult:
    """Solve A x = b for symmetric positive-definite A given only v ↦ A v (Hestenes & Stiefel 1952).

    Starts from x = 0 (deterministic, no RNG), stops once ‖r‖² ≤ residual_tolerance (the squared
    residual, as in Schulman et al. 2015's implementation) or after max_iterations, and stops
    early, keeping the last iterate, if a search direction has non-positive or non-finite
    curvature pᵀAp (A is not SPD on it). b = 0 returns x = 0 after zero iterations.

    syncless: the same iterates without reading anything on the host (2 syncs per iteration
    otherwise): every one of the max_iterations products is computed, and from the iteration that
    would have stopped on, a device-side mask keeps x, r, p and ‖r‖² as they were. The solution is
    the early-stopping one (tests/test_compiled.py compares them); it costs the products the early
    stop would have saved, and A x is computed even for x = 0 (exactly 0 for a linear A).
    """
    x = torch.zeros_like(b)
    r = b.clone()  # r = b − A·0
    p = r.clone()
    rr = torch.dot(r, r)
    iterations = torch.zeros((), dtype=torch.long, device=b.device) if syncless else 0
    running = torch.ones((), dtype=torch.bool, device=b.device) if syncless else None
    for _ in range(max_iterations):
        if syncless:
            running = running & (rr > residual_tolerance)
        elif not bool(rr > residual_tolerance):  # converged, or b itself is non-finite
            break
        ap = matvec(p)
        curvature = torch.dot(p, ap)
        if syncless:
            running = running & (curvature > 0)
        elif not bool(curvature > 0):  # also catches NaN
            break
        alpha = rr / curvature
        x_next = x + alpha * p
        r_next = r - alpha * ap
        rr_next = torch.dot(r_next, r_next)
        p_next = r_next + (rr_next / rr) * p
        if syncless:  # a stopped solve keeps its iterate (where, not a 0·step: the step may be NaN)
            x, r, p, rr = (torch.where(running, new, old) for new, old in ((x_next, x), (r_next, r), (p_next, p),
                                                                            (rr_next, rr)))
            iterations = iterations + running.long()
        else:
            x, r, p, rr = x_next, r_next, p_next, rr_next
            iterations += 1
    product = matvec(x) if syncless or iterations > 0 else torch.zeros_like(b)
    return CGResult(x, iterations, torch.linalg.vector_norm(b - product), product)


def kl_scale(quadratic_form: torch.Tensor | float, radius: float, *, clip: bool = False) -> torch.Tensor:
    """Scale taking a direction d with q = dᵀFd to KL radius δ under the quadratic model ½ s²q = δ.

    clip=False: √(2δ/q) (NPG's step, TRPO's first trial). clip=True: min(1, √(2δ/q)), for a d that
    is already a full step and is only shrunk to respect the trust region (ACKTR's KL clip).
    Invalid q (≤ 0, NaN, ±inf) gives a scale of exactly 0, as a tensor, without a host sync: the
    caller tests `scale > 0` when (and if) it wants to know, and a zero step is harmless if applied.
    """
    q = torch.as_tensor(quadratic_form)
    valid = torch.isfinite(q) & (q > 0)
    scale = torch.sqrt(2.0 * radius / torch.where(valid, q, torch.ones_like(q)))
    if clip:
        scale = torch.clamp(scale, max=1.0)
    return torch.where(valid, scale, torch.zeros_like(scale))


def predicted_kl(quadratic_form: torch.Tensor | float, scale: torch.Tensor | float = 1.0) -> torch.Tensor | float:
    """½ s² q: the KL the quadratic model predicts for the step s·d of a direction d with q = dᵀFd
    (the inverse of `kl_scale`: predicted_kl(q, kl_scale(q, δ)) = δ)."""
    return 0.5 * scale * scale * quadratic_form


@dataclass
class NaturalStep:
    """Outcome of `natural_step`.

    step: the parameter change to add (zeros when invalid). direction: x ≈ F⁻¹g from CG.
    quadratic_form: xᵀ(F+λI)x with the matvec given. cg: the CG report. valid: False when g, x or q
    is non-finite or q ≤ 0. expected_improvement: gᵀ step, the linear model's predicted gain (what
    `backtracking_line_search` compares against).
    """

    step: torch.Tensor
    direction: torch.Tensor
    quadratic_form: torch.Tensor
    cg: CGResult
    valid: bool | torch.Tensor
    expected_improvement: torch.Tensor


def natural_step(
    gradient: torch.Tensor,
    fvp: Callable[[torch.Tensor], torch.Tensor],
    max_kl: float,
    cg_iterations: int = 10,
    cg_tolerance: float = 1e-10,
    syncless: bool = False,
) -> NaturalStep:
    """x = CG(F, g); step = √(2δ / xᵀFx) · x, the ascent step whose quadratic-model KL is δ = max_kl.

    `gradient` is of the objective to *maximise* (e.g. the surrogate advantage); add `step` to θ.
    syncless: CG without host syncs (`conjugate_gradient`) and `valid` a 0-dim bool tensor, not read.
    """
    cg = conjugate_gradient(fvp, gradient, cg_iterations, cg_tolerance, syncless=syncless)
    x = cg.solution
    q = torch.dot(x, cg.product)  # xᵀFx from the product CG already computed for its residual
    scale = kl_scale(q, max_kl)
    finite = torch.isfinite(gradient).all() & torch.isfinite(x).all()
    valid = finite & (scale > 0)  # kl_scale is 0 exactly when q ≤ 0 or non-finite
    if syncless:
        step = torch.where(valid, x * scale, torch.zeros_like(x))
    else:
        valid = bool(valid)
        step = x * scale if valid else torch.zeros_like(x)
    return NaturalStep(step, x, q, cg, valid, torch.dot(gradient, step))


# ---------------------------------------------------------------------------------------------
# line search
# ---------------------------------------------------------------------------------------------


@dataclass
class LineSearchResult:
    """Outcome of `backtracking_line_search`.

    accepted: whether a trial was kept. step_fraction: the fraction of the step applied (0.0 when
    none was). backtracks: how many times the step was shrunk before acceptance (max_backtracks
    when none was accepted). kl, improvement: of the accepted trial, else of the last one tried.
    Python numbers, or 0-dim tensors (not read) from the syncless search.
    """

    accepted: bool | torch.Tensor
    step_fraction: float | torch.Tensor
    backtracks: int | torch.Tensor
    kl: float | torch.Tensor
    improvement: float | torch.Tensor


def _trial_accepted(improvement, kl, max_kl: float, threshold):
    """The line search's test of one trial: finite, within the KL radius, improving by more than the
    threshold. On Python floats a bool; on tensors a bool tensor (nothing is read)."""
    if isinstance(improvement, torch.Tensor):
        finite = torch.isfinite(improvement) & torch.isfinite(kl)
    else:
        finite = math.isfinite(improvement) and math.isfinite(kl)
    return finite & (kl <= max_kl) & (improvement > threshold)


@torch.no_grad()
def backtracking_line_search(
    params: Sequence[torch.Tensor],
    step: torch.Tensor,
    evaluate: Callable[[], tuple[torch.Tensor | float, torch.Tensor | float]],
    *,
    max_kl: float,
    expected_improvement: torch.Tensor | float,
    backtrack_coef: float = 0.8,
    max_backtracks: int = 10,
    accept_ratio: float = 0.0,
    syncless: bool = False,
) -> LineSearchResult:
    """Try θ_old + βʲ·step for j = 0, 1, …, max_backtracks (β = backtrack_coef) and keep the first
    whose surrogate improvement is finite, > 0 and > accept_ratio · expected · βʲ, and whose mean KL
    is ≤ max_kl (Schulman et al. 2015, appendix C). If none passes, θ_old is restored bit for bit.

    `evaluate()` returns (surrogate improvement, mean KL(π_old ‖ π)) at the parameters currently
    assigned; it runs under torch.no_grad like the whole search. At most max_backtracks + 1 trials.

    syncless: every trial is evaluated (no host read to stop at the first accepted one), and the first
    accepted is chosen on the device. The same parameters and result, except that the test compares
    in the evaluations' float32 where the host compares their float64 values: a trial whose KL is within
    a float32 rounding of max_kl may be decided the other way. It costs the trials the early exit
    would have saved (usually max_backtracks of them).
    """
    if syncless:
        return _syncless_line_search(params, step, evaluate, max_kl, expected_improvement, backtrack_coef,
                                     max_backtracks, accept_ratio)
    old = flat_parameters(params)
    expected = float(expected_improvement)
    improvement = kl = float("nan")
    for j in range(max_backtracks + 1):
        fraction = backtrack_coef**j
        assign_flat_parameters(params, old + fraction * step)
        improvement, kl = (float(t) for t in evaluate())
        if _trial_accepted(improvement, kl, max_kl, max(0.0, accept_ratio * expected * fraction)):
            return LineSearchResult(True, fraction, j, kl, improvement)
    assign_flat_parameters(params, old)  # copying the saved tensor back: exact, not old + 0·step
    return LineSearchResult(False, 0.0, max_backtracks, kl, improvement)


def _syncless_line_search(params, step, evaluate, max_kl, expected_improvement, backtrack_coef, max_backtracks,
                          accept_ratio) -> LineSearchResult:
    old = flat_parameters(params)
    expected = torch.as_tensor(expected_improvement, device=old.device)
    accepted, improvements, kls = [], [], []
    for j in range(max_backtracks + 1):
        fraction = backtrack_coef**j
        assign_flat_parameters(params, old + fraction * step)
        improvement, kl = (torch.as_tensor(t, device=old.device) for t in evaluate())
        accepted.append(_trial_accepted(improvement, kl, max_kl, (accept_ratio * expected * fraction).clamp_min(0.0)))
        improvements.append(improvement)
        kls.append(kl)
    accepted, improvements, kls = torch.stack(accepted), torch.stack(improvements), torch.stack(kls)
    any_accepted = accepted.any()
    # the first accepted trial (argmax of a bool row is its first True); none: the last one tried
    first = torch.where(any_accepted, accepted.to(torch.uint8).argmax(), max_backtracks)
    # βʲ as the plain search computes it (in double, then float32 in the product), made on the device: no copy
    exponents = torch.arange(max_backtracks + 1, dtype=torch.float64, device=old.device)
    fractions = torch.full_like(exponents, backtrack_coef).pow(exponents).to(old.dtype)
    fraction = torch.where(any_accepted, fractions[first], 0.0)
    # the accepted trial's parameters as it computed them (old + βʲ·step), or θ_old itself
    assign_flat_parameters(params, torch.where(any_accepted, old + fractions[first] * step, old))
    return LineSearchResult(any_accepted, fraction, first, kls[first], improvements[first])
