"""K-FAC: a Kronecker-factored Fisher preconditioner (Martens & Grosse 2015; KFC, Grosse & Martens 2016).

K-FAC is a *preconditioner*, kept apart from the optimiser (the pattern of gpauloski/kfac-pytorch):
`loss.backward(); preconditioner.step(); optimizer.step()`. `step()` overwrites the `.grad` of every
tracked layer with the natural-gradient direction; any `torch.optim` optimiser then applies it.

Per tracked layer the Fisher block of the augmented weight W̄ = [W | b] ([out, in+1], the bias is the
weight of a constant-1 input) is approximated as F ≈ A ⊗ G, with

| symbol | shape          | definition                                                                   |
|--------|----------------|------------------------------------------------------------------------------|
| ā      | [in+1]         | layer input with a constant 1 appended (a flattened input patch for Conv2d)  |
| g      | [out]          | per-sample gradient of the sampled-target loss w.r.t. the layer output        |
| A      | [in+1, in+1]   | E[ā āᵀ]; Conv2d: mean over samples *and* spatial locations                    |
| G      | [out, out]     | E[g gᵀ]; Conv2d: per-location outer products, summed over locations, mean over samples |

Vec convention: A ⊗ G is the Fisher for the *column-stacking* vec, vec(W̄) = W̄ᵀ.reshape(-1), so that
(A ⊗ G)⁻¹ vec(∇W̄) = vec(G⁻¹ ∇W̄ A⁻¹): in torch's [out, in] layout the preconditioned gradient is
G⁻¹ ∇W̄ A⁻¹. (For torch's row-major flatten, W̄.reshape(-1), the same block reads G ⊗ A.)

Damping λ (`damping`), two forms (`damping_form`):

- "eigen" (default): A = Q_A diag(d_A) Q_Aᵀ, G = Q_G diag(d_G) Q_Gᵀ (torch.linalg.eigh) and
  V = Q_G [(Q_Gᵀ ∇W̄ Q_A) / (d_G d_Aᵀ + λ)] Q_Aᵀ, which is exactly (A ⊗ G + λI)⁻¹ vec(∇W̄)
  (the form of ikostrikov/pytorch-a2c-ppo-acktr-gail's KFACOptimizer).
- "tikhonov": factored damping (A + π√λ I) ⊗ (G + √λ/π I) with π = √((tr A / dim A) / (tr G / dim G))
  (Martens & Grosse 2015, section 6.3), an approximation of A ⊗ G + λI. It is applied in the same
  eigenbasis: the denominator becomes (d_G + √λ/π)(d_A + π√λ)ᵀ.

The eigendecompositions are refreshed every `update_inverse_every` calls of `step()`; λ is applied at
every step, so changing `preconditioner.damping` takes effect immediately. Eigenvalues are clamped at
0 (A and G are PSD; eigh returns tiny negative values for singular factors).

Statistics (the model Fisher, not the empirical one). A and G must come from the gradient of a loss
whose targets are *sampled from the model*, e.g. -log π(ã|s) with ã ~ π(·|s) for the actor, and for a
critic read as a unit-variance Gaussian the NLL ½(v − ṽ)² with ṽ ~ N(v, 1) (ACKTR: Wu et al. 2017;
baselines writes it as (v − stop_gradient(v + N(0,1)))²). Statistics are collected only during a
backward run inside `with preconditioner.track_statistics(): ...`, and only on every
`update_statistics_every`-th entry of that context; A and G are exponential running averages with
weight `stat_decay` on the past (the first batch initialises them). With `loss_reduction="mean"` the
Fisher loss is taken to be a mean over samples, so output gradients are multiplied by the number of
samples to recover per-sample gradients (samples = rows of a Linear input after flattening leading
dims; the batch dimension of a Conv2d input).

Hooks: each tracked layer gets a forward hook (`register_forward_hook`) that, when the output needs a
gradient, registers a tensor hook on that output holding a reference to the layer's input; the tensor
hook computes the batch's A and G only while `track_statistics()` is collecting, so every call of a
layer pairs its own input with its own output gradient (a layer called twice contributes both calls).

What is tracked: every `nn.Linear` and `nn.Conv2d` (groups=1) in the model whose weight requires
grad, except modules listed in `exclude`. Every other parameter (LayerNorm, a free log σ, Conv1d,
...) is left alone: `step()` does not touch its gradient and `fisher_quadratic_form` gives it no
block. A tracked layer must be *called* (its forward hook must fire) for statistics to exist, so a
Linear used only through its `.weight` (e.g. `nn.MultiheadAttention.out_proj`) must be excluded.

Non-finite guard: a statistics batch with a non-finite entry is dropped (the running averages keep
their last finite value) and reported; if any factor, eigendecomposition, gradient or result is
non-finite, `step()` sets the gradients of all tracked layers to zero (never NaN/inf) and returns
`finite=False` so the agent can skip the update.

ACKTR with it (Wu et al. 2017). Defaults and where they come from, as best known: lr 0.25, momentum
0.9 and kl_clip 0.001 are the Atari settings of the ACKTR paper and of openai/baselines' acktr;
stat_decay 0.99, damping 1e-2, statistics every step and inverses every 10 steps are the defaults of
ikostrikov/pytorch-a2c-ppo-acktr-gail's KFACOptimizer (baselines uses damping ε = 0.01, stats decay
0.99 in acktr's Model). The trust region is the paper's η = min(1, √(2·kl_clip / ΔᵀF̂Δ)); note that
baselines and ikostrikov compute √(kl_clip / (lr²·vᵀ∇)) instead (no factor 2, damped quadratic form).

    precond = KFACPreconditioner(model, damping=1e-2, stat_decay=0.99, update_inverse_every=10)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.25, momentum=0.9)

    dist, value = model(obs)                                  # one forward, graph kept
    with torch.no_grad():                                     # targets sampled from the model
        a_tilde = dist.sample()
        v_tilde = value + torch.randn_like(value)
    fisher_loss = -dist.log_prob(a_tilde).mean() + 0.5 * (value - v_tilde).pow(2).mean()
    optimizer.zero_grad()
    with precond.track_statistics() as collecting:
        if collecting:                                        # skip the backward when not due
            fisher_loss.backward(retain_graph=True)
    optimizer.zero_grad()                                     # the Fisher grads are not the update
    loss = pg_loss + vf_coef * vf_loss - ent_coef * entropy   # from the same dist, value
    loss.backward()
    stats = precond.step()                                    # .grad <- (F̂ + λ)⁻¹ ∇
    if stats.finite:
        q = precond.fisher_quadratic_form({p: -lr * p.grad for p in model.parameters()
                                           if p.grad is not None})
        eta = rlgeom.geometry.fisher.kl_scale(q, kl_clip, clip=True)   # min(1, √(2·kl_clip / q))
        for p in model.parameters():
            if p.grad is not None:
                p.grad.mul_(eta)
        optimizer.step()
"""

from __future__ import annotations

import abc
import contextlib
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rlgeom import validation
from rlgeom.training import distributed

__all__ = ["KFACPreconditioner", "KFACStats"]

_FORMAT = "rlgeom.geometry.kfac/1"
_DAMPING_FORMS = ("eigen", "tikhonov")
_REDUCTIONS = ("mean", "sum")


@dataclass(frozen=True)
class KFACStats:
    """What one `step()` did, for logging under `geometry/` (all plain Python values).

    damping: λ used. damping_form: "eigen" or "tikhonov". inverses_updated: the eigendecompositions
    were refreshed this step; inverse_seconds: wall time spent on them. eig_min_A / eig_max_A /
    eig_min_G / eig_max_G: smallest and largest factor eigenvalue over all layers (clamped at 0), as
    of the last refresh. max_condition: the largest condition number over layers of the damped
    block that is actually inverted. finite: the written gradients are the preconditioned ones and
    are finite (False: tracked grads were set to zero; skip the update). nonfinite_layers: names
    of the layers that caused finite=False. rejected_statistics: layers whose statistics batch was
    dropped as non-finite since the previous step. n_layers: number of tracked layers.
    """

    damping: float
    damping_form: str
    inverses_updated: bool
    inverse_seconds: float
    eig_min_A: float
    eig_max_A: float
    eig_min_G: float
    eig_max_G: float
    max_condition: float
    finite: bool
    nonfinite_layers: tuple[str, ...]
    rejected_statistics: tuple[str, ...]
    n_layers: int

    def scalars(self) -> dict[str, float]:
        """The numeric fields as a flat dict of floats (for a TensorBoard logger)."""
        out = {}
        for key, value in asdict(self).items():
            if isinstance(value, bool):
                out[key] = float(value)
            elif isinstance(value, (int, float)):
                out[key] = float(value)
            elif isinstance(value, tuple):
                out[key] = float(len(value))
        return out


class _Layer(abc.ABC):
    """Factors and eigendecompositions of one tracked layer; subclasses know the layer's geometry."""

    def __init__(self, name: str, module: nn.Module):
        self.name = name
        self.module = module
        self.has_bias = module.bias is not None
        weight = module.weight
        self.out_dim = weight.shape[0]
        self.in_dim = weight[0].numel() + int(self.has_bias)
        self.A: torch.Tensor | None = None
        self.G: torch.Tensor | None = None
        self.eig: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.eig_ok = True
        self.eig_summary = (math.nan, math.nan, math.nan, math.nan)
        self._acc_A: torch.Tensor | None = None
        self._acc_G: torch.Tensor | None = None
        self._acc_n = 0

    # -- geometry, per layer type -------------------------------------------------------------
    @abc.abstractmethod
    def patches(self, x: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Input rows [rows, in] (without the constant 1) and the number of samples."""

    @abc.abstractmethod
    def output_rows(self, grad: torch.Tensor) -> tuple[torch.Tensor, int]:
        """Output gradients as rows [rows, out] and the number of samples."""

    # -- statistics ------------------------------------------------------------------------------
    def accumulate(self, x: torch.Tensor, grad: torch.Tensor, reduction: str) -> None:
        dtype = self.module.weight.dtype
        rows, n = self.patches(x.to(dtype))
        if self.has_bias:
            rows = torch.cat([rows, rows.new_ones(rows.shape[0], 1)], dim=1)
        A = rows.t() @ rows / rows.shape[0]                      # mean over samples (and locations)
        g, n_g = self.output_rows(grad.to(dtype))
        if reduction == "mean":
            g = g * n_g                                          # per-sample gradients of a mean loss
        G = g.t() @ g / n_g                                      # sum over locations, mean over samples
        if self._acc_A is None:
            self._acc_A, self._acc_G = A * n, G * n_g
        else:
            self._acc_A = self._acc_A + A * n
            self._acc_G = self._acc_G + G * n_g
        self._acc_n += n

    def fold(self, decay: float) -> bool | None:
        """Fold the accumulated batch into the running averages. None: no data; False: rejected."""
        if self._acc_A is None:
            return None
        count = self._acc_n
        if distributed.active():  # the statistics of every rank's batch (sums of A·n, G·n and n) before inverting
            count = distributed.sum_(torch.tensor(float(count), dtype=self._acc_A.dtype, device=self._acc_A.device))
            distributed.sum_(self._acc_A)
            distributed.sum_(self._acc_G)
        A_b, G_b = self._acc_A / count, self._acc_G / count
        self.reset_accumulator()
        if not bool(torch.isfinite(A_b).all() & torch.isfinite(G_b).all()):
            return False
        if self.A is None:
            self.A, self.G = A_b.clone(), G_b.clone()
        else:
            self.A.mul_(decay).add_(A_b, alpha=1.0 - decay)
            self.G.mul_(decay).add_(G_b, alpha=1.0 - decay)
        return True

    def reset_accumulator(self) -> None:
        self._acc_A = self._acc_G = None
        self._acc_n = 0

    # -- inverses ---------------------------------------------------------------------------------
    def refresh_eig(self) -> None:
        A, G = self.A, self.G
        if not bool(torch.isfinite(A).all() & torch.isfinite(G).all()):
            self.eig, self.eig_ok = None, False
            return
        try:
            d_A, Q_A = _eigh(A)
            d_G, Q_G = _eigh(G)
        except torch.linalg.LinAlgError:
            self.eig, self.eig_ok = None, False
            return
        tr_A = A.diagonal().sum() / A.shape[0]
        tr_G = G.diagonal().sum() / G.shape[0]
        ok = (tr_A > 0) & (tr_G > 0)
        pi = torch.where(ok, torch.sqrt(tr_A / torch.where(ok, tr_G, torch.ones_like(tr_G))), torch.ones_like(tr_A))
        # row-major eigenvectors (eigh returns column-major ones), so that a restored checkpoint has the
        # same memory layout, takes the same matmul path and preconditions bit for bit identically
        self.eig = (Q_A.contiguous(), d_A.clamp_min(0), Q_G.contiguous(), d_G.clamp_min(0), pi)
        finite = all(bool(torch.isfinite(t).all()) for t in self.eig)
        self.eig_ok = finite
        if finite:
            self.eig_summary = tuple(float(v) for v in torch.stack(
                [self.eig[1].min(), self.eig[1].max(), self.eig[3].min(), self.eig[3].max()]).tolist())
        else:
            self.eig = None

    def denominator(self, damping: float, form: str) -> torch.Tensor:
        _, d_A, _, d_G, pi = self.eig
        if form == "eigen":
            return d_G[:, None] * d_A[None, :] + damping
        root = math.sqrt(damping)
        return (d_G + root / pi)[:, None] * (d_A + pi * root)[None, :]

    def condition(self, damping: float, form: str) -> torch.Tensor:
        den = self.denominator(damping, form)
        return den.max() / den.min()

    def precondition(self, grad: torch.Tensor, damping: float, form: str) -> torch.Tensor:
        Q_A, _, Q_G, _, _ = self.eig
        return Q_G @ ((Q_G.t() @ grad @ Q_A) / self.denominator(damping, form)) @ Q_A.t()

    # -- gradients in the augmented [out, in(+1)] layout -----------------------------------------
    def augmented(self, d_weight: torch.Tensor | None, d_bias: torch.Tensor | None) -> torch.Tensor:
        weight = self.module.weight
        dtype = weight.dtype
        cols = [d_weight.reshape(self.out_dim, -1).to(dtype) if d_weight is not None
                else weight.new_zeros(self.out_dim, self.in_dim - int(self.has_bias))]
        if self.has_bias:
            cols.append(d_bias.reshape(self.out_dim, 1).to(dtype) if d_bias is not None
                        else weight.new_zeros(self.out_dim, 1))
        return torch.cat(cols, dim=1)

    def write(self, matrix: torch.Tensor) -> None:
        weight, bias = self.module.weight, self.module.bias
        if weight.grad is not None:
            weight.grad.copy_(matrix[:, : weight[0].numel()].reshape_as(weight))
        if self.has_bias and bias.grad is not None:
            bias.grad.copy_(matrix[:, -1])

    def zero_grads(self) -> None:
        for p in (self.module.weight, self.module.bias):
            if p is not None and p.grad is not None:
                p.grad.zero_()


class _LinearLayer(_Layer):
    """nn.Linear: every row of the (flattened) input is a sample."""

    def patches(self, x):
        rows = x.reshape(-1, x.shape[-1])
        return rows, rows.shape[0]

    def output_rows(self, grad):
        rows = grad.reshape(-1, grad.shape[-1])
        return rows, rows.shape[0]


class _Conv2dLayer(_Layer):
    """nn.Conv2d (KFC): a sample is an image, its rows are the spatial locations of the output."""

    def __init__(self, name: str, module: nn.Conv2d):
        if module.groups != 1:
            raise ValueError(
                f"K-FAC: Conv2d layer {name!r} has groups={module.groups}; only groups=1 is supported. "
                f"Pass it in `exclude=` to leave it unpreconditioned.")
        super().__init__(name, module)
        kh, kw = module.kernel_size
        dh, dw = module.dilation
        if isinstance(module.padding, str):
            if module.padding == "valid":
                pads = (0, 0, 0, 0)
            else:  # "same" (stride 1): split the total padding like torch does, extra on the right
                th, tw = dh * (kh - 1), dw * (kw - 1)
                pads = (tw // 2, tw - tw // 2, th // 2, th - th // 2)
        else:
            ph, pw = module.padding
            pads = (pw, pw, ph, ph)
        self.pads = pads
        self.pad_mode = "constant" if module.padding_mode == "zeros" else module.padding_mode

    def patches(self, x):
        if x.dim() == 3:  # unbatched input
            x = x.unsqueeze(0)
        m = self.module
        if any(self.pads):
            x = F.pad(x, self.pads, mode=self.pad_mode)
        cols = F.unfold(x, m.kernel_size, dilation=m.dilation, padding=0, stride=m.stride)  # [B, C·kh·kw, L]
        return cols.transpose(1, 2).reshape(-1, cols.shape[1]), x.shape[0]

    def output_rows(self, grad):
        if grad.dim() == 3:
            grad = grad.unsqueeze(0)
        return grad.permute(0, 2, 3, 1).reshape(-1, grad.shape[1]), grad.shape[0]


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    sym = 0.5 * (matrix + matrix.t())
    try:
        return torch.linalg.eigh(sym)
    except torch.linalg.LinAlgError:
        if sym.dtype == torch.float64:
            raise
        d, Q = torch.linalg.eigh(sym.double())  # float32 eigh can fail to converge on singular factors
        return d.to(sym.dtype), Q.to(sym.dtype)


def _check_every(name: str, value) -> int:
    return validation.positive_int(f"K-FAC: {name}", value, meaning="a positive integer (1 = every call)")


class KFACPreconditioner:
    """Kronecker-factored natural-gradient preconditioner for the Linear and Conv2d layers of `model`.

    Args:
        model: the network; its `nn.Linear` / `nn.Conv2d` layers (weight requiring grad) are tracked.
        damping: λ > 0 of (A ⊗ G + λI) ("eigen") or of the factored Tikhonov form ("tikhonov").
        damping_form: "eigen" (exact for A ⊗ G + λI, default) or "tikhonov".
        stat_decay: weight of the past in the running averages of A and G, in [0, 1).
        update_statistics_every: T_stats; statistics are collected on every T_stats-th entry of
            `track_statistics()` (the 1st, the (T_stats+1)-th, ...).
        update_inverse_every: T_inv; eigendecompositions are refreshed on every T_inv-th `step()`
            (the 1st, the (T_inv+1)-th, ...) and whenever a layer has statistics but none yet.
        loss_reduction: "mean" if the Fisher loss averages over samples (gradients are rescaled to
            per-sample ones), "sum" if it sums.
        exclude: modules not to track (their parameters are left alone).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        damping: float = 1e-2,
        damping_form: str = "eigen",
        stat_decay: float = 0.99,
        update_statistics_every: int = 1,
        update_inverse_every: int = 10,
        loss_reduction: str = "mean",
        exclude: Iterable[nn.Module] = (),
    ):
        if not isinstance(model, nn.Module):
            raise TypeError(f"K-FAC: model must be a torch.nn.Module, got {type(model).__name__}")
        self.damping = damping
        if damping_form not in _DAMPING_FORMS:
            raise ValueError(f"K-FAC: damping_form must be one of {_DAMPING_FORMS}, got {damping_form!r}")
        if not (isinstance(stat_decay, (int, float)) and 0.0 <= stat_decay < 1.0):
            raise ValueError(f"K-FAC: stat_decay must be a number in [0, 1), got {stat_decay!r}")
        if loss_reduction not in _REDUCTIONS:
            raise ValueError(f"K-FAC: loss_reduction must be one of {_REDUCTIONS}, got {loss_reduction!r}")
        self.damping_form = damping_form
        self.stat_decay = float(stat_decay)
        self.update_statistics_every = _check_every("update_statistics_every", update_statistics_every)
        self.update_inverse_every = _check_every("update_inverse_every", update_inverse_every)
        self.loss_reduction = loss_reduction

        excluded = {id(m) for m in exclude}
        self._params = list(model.parameters())
        self._layers: list[_Layer] = []
        for name, module in model.named_modules():
            if id(module) in excluded or not isinstance(module, (nn.Linear, nn.Conv2d)):
                continue
            if not module.weight.requires_grad:
                continue
            name = name or "model"
            if isinstance(module, nn.Conv2d):
                self._layers.append(_Conv2dLayer(name, module))
            elif isinstance(module, nn.Linear):
                self._layers.append(_LinearLayer(name, module))
        if not self._layers:
            raise ValueError("K-FAC: the model has no nn.Linear or nn.Conv2d layer with a trainable weight "
                             "(after `exclude`); there is nothing to precondition")
        self._handles = [layer.module.register_forward_hook(self._forward_hook(layer)) for layer in self._layers]

        self._collecting = False
        self._in_context = False
        self._statistics_calls = 0
        self._statistics_updates = 0
        self._steps = 0
        self._inverse_updates = 0
        self._rejected: list[str] = []

    # -- properties --------------------------------------------------------------------------------
    @property
    def damping(self) -> float:
        return self._damping

    @damping.setter
    def damping(self, value: float) -> None:
        self._damping = float(validation.positive("K-FAC: damping", value, finite=True))

    @property
    def layer_names(self) -> tuple[str, ...]:
        """Names (as in `model.named_modules()`) of the tracked layers, in model order."""
        return tuple(layer.name for layer in self._layers)

    @property
    def counters(self) -> dict[str, int]:
        """statistics_calls: entries of `track_statistics()`; statistics_updates: entries that
        collected and folded statistics; steps: calls of `step()` (repeats not counted); inverse_updates: refreshes."""
        return {
            "statistics_calls": self._statistics_calls,
            "statistics_updates": self._statistics_updates,
            "steps": self._steps,
            "inverse_updates": self._inverse_updates,
        }

    def factors(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Copies of the running factors (A, G) of every layer that has statistics, by layer name."""
        return {layer.name: (layer.A.clone(), layer.G.clone()) for layer in self._layers if layer.A is not None}

    # -- statistics --------------------------------------------------------------------------------
    def _forward_hook(self, layer: _Layer):
        def hook(module, inputs, output):
            if not (torch.is_grad_enabled() and isinstance(output, torch.Tensor) and output.requires_grad):
                return
            x = inputs[0].detach()

            def on_output_grad(grad):
                if self._collecting:
                    layer.accumulate(x, grad.detach(), self.loss_reduction)

            output.register_hook(on_output_grad)

        return hook

    @contextlib.contextmanager
    def track_statistics(self) -> Iterator[bool]:
        """Collect A and G from the backward run(s) inside this block, every T_stats-th entry.

        Run the backward of a loss with targets sampled from the model (the model Fisher). Yields
        whether this entry collects, so the caller may skip the backward when it does not.
        """
        if self._in_context:
            raise RuntimeError("K-FAC: track_statistics() is already active; it cannot be nested")
        collect = self._statistics_calls % self.update_statistics_every == 0
        self._statistics_calls += 1
        self._in_context = True
        self._collecting = collect
        completed = False
        try:
            yield collect
            completed = True
        finally:
            self._collecting = False
            self._in_context = False
            if completed and collect:
                folded = False
                for layer in self._layers:
                    result = layer.fold(self.stat_decay)
                    if result is False:
                        self._rejected.append(layer.name)
                    folded = folded or result is True
                if folded:
                    self._statistics_updates += 1
            for layer in self._layers:
                layer.reset_accumulator()

    # -- preconditioning ---------------------------------------------------------------------------
    def _active_layers(self) -> list[_Layer]:
        active = []
        for layer in self._layers:
            m = layer.module
            if m.weight.grad is None and (m.bias is None or m.bias.grad is None):
                continue
            if layer.A is None and layer.name not in self._rejected:  # rejected: reported as non-finite
                raise RuntimeError(
                    f"K-FAC: layer {layer.name!r} has a gradient but no statistics yet. Run the backward of a "
                    f"sampled-target loss inside `with preconditioner.track_statistics():` before step(), "
                    f"or pass the module in `exclude=` if it should not be preconditioned.")
            active.append(layer)
        return active

    @torch.no_grad()
    def step(self, *, repeat: bool = False) -> KFACStats:
        """Overwrite the grads of tracked layers with (F̂ + λ)⁻¹ ∇ and report what was done.

        Layers whose parameters have no grad are skipped; untracked parameters are never touched.
        repeat: another step on the statistics of the previous one (a further pass over the same batch, e.g.
        ACKTR's extra critic passes); it reuses the eigendecompositions and does not count toward T_inv, so
        the refresh cadence of the main steps is the same with or without repeats.
        """
        active = self._active_layers()
        refresh = (not repeat and self._steps % self.update_inverse_every == 0) or any(
            layer.eig is None and layer.eig_ok for layer in active)
        seconds = 0.0
        if refresh:
            with_stats = [layer for layer in self._layers if layer.A is not None]
            _synchronize(with_stats)
            start = time.perf_counter()
            for layer in with_stats:
                layer.refresh_eig()
            _synchronize(with_stats)
            seconds = time.perf_counter() - start
            self._inverse_updates += 1
        if not repeat:
            self._steps += 1

        damping, form = self.damping, self.damping_form
        bad = [layer.name for layer in active if layer.eig is None]
        results = []
        for layer in active:
            if layer.eig is not None:
                m = layer.module
                grad = layer.augmented(m.weight.grad, None if m.bias is None else m.bias.grad)
                results.append((layer, layer.precondition(grad, damping, form)))
        decomposed = [layer for layer in self._layers if layer.eig is not None]
        # one host sync per step: finiteness of every result and the damped condition numbers
        checks = [torch.isfinite(out).all() for _, out in results]
        checks += [layer.condition(damping, form) for layer in decomposed]
        if checks:
            device = checks[0].device
            checks = torch.stack([c.to(device=device, dtype=torch.float32) for c in checks]).tolist()
        finite_flags, conditions = checks[: len(results)], checks[len(results):]
        bad += [layer.name for (layer, _), good in zip(results, finite_flags) if not good]
        if bad:
            for layer in active:
                layer.zero_grads()
        else:
            for layer, out in results:
                layer.write(out)

        summaries = [layer.eig_summary for layer in decomposed]
        rejected = tuple(self._rejected)
        self._rejected = []
        return KFACStats(
            damping=damping,
            damping_form=form,
            inverses_updated=refresh,
            inverse_seconds=seconds,
            eig_min_A=min((s[0] for s in summaries), default=math.nan),
            eig_max_A=max((s[1] for s in summaries), default=math.nan),
            eig_min_G=min((s[2] for s in summaries), default=math.nan),
            eig_max_G=max((s[3] for s in summaries), default=math.nan),
            max_condition=max(conditions, default=math.nan),
            finite=not bad,
            nonfinite_layers=tuple(bad),
            rejected_statistics=rejected,
            n_layers=len(self._layers),
        )

    @torch.no_grad()
    def fisher_quadratic_form(
        self, deltas: Mapping[torch.Tensor, torch.Tensor] | Sequence[torch.Tensor | None] | None = None
    ) -> torch.Tensor:
        """ΔᵀF̂Δ = Σ_layers vec(Δ̄)ᵀ (A ⊗ G) vec(Δ̄) = Σ_layers tr(Δ̄ᵀ G Δ̄ A) (undamped running factors).

        deltas: {parameter: change}, or a sequence aligned with `model.parameters()` (None entries
        allowed), or None to use the current `.grad` of the parameters. Parameters outside tracked
        layers have no K-FAC block and contribute nothing. Returns a 0-dim tensor (no host sync).
        """
        if deltas is None:
            lookup = {id(p): p.grad for p in self._params if p.grad is not None}
        elif isinstance(deltas, Mapping):
            lookup = {id(p): d for p, d in deltas.items()}
        else:
            deltas = list(deltas)
            if len(deltas) != len(self._params):
                raise ValueError(
                    f"K-FAC: fisher_quadratic_form got a sequence of {len(deltas)} deltas; a sequence must "
                    f"match model.parameters() ({len(self._params)} tensors), or pass a dict {{param: delta}}")
            lookup = {id(p): d for p, d in zip(self._params, deltas)}
        total = None
        for layer in self._layers:
            m = layer.module
            d_w = lookup.get(id(m.weight))
            d_b = lookup.get(id(m.bias)) if m.bias is not None else None
            if d_w is None and d_b is None:
                continue
            for p, d in ((m.weight, d_w), (m.bias, d_b)):
                if d is not None and d.shape != p.shape:
                    raise ValueError(f"K-FAC: delta for a parameter of layer {layer.name!r} has shape "
                                     f"{tuple(d.shape)}, expected {tuple(p.shape)}")
            if layer.A is None and layer.name not in self._rejected:  # rejected: reported as non-finite
                raise RuntimeError(f"K-FAC: layer {layer.name!r} has no statistics yet; collect them with "
                                   f"track_statistics() before fisher_quadratic_form()")
            D = layer.augmented(d_w, d_b)
            q = (D * (layer.G @ D @ layer.A)).sum()
            total = q if total is None else total + q
        if total is None:
            return torch.zeros((), dtype=self._layers[0].module.weight.dtype,
                               device=self._layers[0].module.weight.device)
        return total

    # -- checkpoints -------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, dict]:
        """{"tensors": flat {str: Tensor} (safetensors-ready), "meta": JSON-able counters}.

        Saves factors and eigendecompositions, so a restored preconditioner preconditions
        identically, also between inverse refreshes. Hyperparameters are config, not state.
        """
        tensors: dict[str, torch.Tensor] = {}
        for layer in self._layers:
            if layer.A is None:
                continue
            tensors[f"{layer.name}.A"] = layer.A.detach().clone().contiguous()
            tensors[f"{layer.name}.G"] = layer.G.detach().clone().contiguous()
            if layer.eig is not None:
                for key, t in zip(("Q_A", "d_A", "Q_G", "d_G", "pi"), layer.eig):
                    tensors[f"{layer.name}.{key}"] = t.detach().clone().contiguous()
        meta = {"format": _FORMAT, "layers": list(self.layer_names), **self.counters}
        return {"tensors": tensors, "meta": meta}

    def load_state_dict(self, state: Mapping[str, Mapping]) -> None:
        """Restore what `state_dict()` returned (tensors are moved to each layer's device and dtype)."""
        if not isinstance(state, Mapping) or "tensors" not in state or "meta" not in state:
            raise ValueError("K-FAC: load_state_dict expects {'tensors': {...}, 'meta': {...}} as made by state_dict()")
        tensors, meta = state["tensors"], state["meta"]
        if meta.get("format") != _FORMAT:
            raise ValueError(f"K-FAC: state format {meta.get('format')!r} is not {_FORMAT!r}")
        if list(meta.get("layers", [])) != list(self.layer_names):
            raise ValueError(f"K-FAC: saved layers {meta.get('layers')} do not match this model's tracked "
                             f"layers {list(self.layer_names)}")
        for layer in self._layers:
            w = layer.module.weight
            shapes = {"A": (layer.in_dim,) * 2, "G": (layer.out_dim,) * 2, "Q_A": (layer.in_dim,) * 2,
                      "d_A": (layer.in_dim,), "Q_G": (layer.out_dim,) * 2, "d_G": (layer.out_dim,), "pi": ()}
            loaded = {}
            for key, shape in shapes.items():
                t = tensors.get(f"{layer.name}.{key}")
                if t is None:
                    continue
                if tuple(t.shape) != shape:
                    raise ValueError(f"K-FAC: saved {layer.name}.{key} has shape {tuple(t.shape)}, expected {shape}")
                loaded[key] = t.to(device=w.device, dtype=w.dtype).clone()
            if loaded and not {"A", "G"} <= set(loaded):
                raise ValueError(f"K-FAC: saved state for layer {layer.name!r} has eigendecompositions but no factors")
            layer.A, layer.G = loaded.get("A"), loaded.get("G")
            if all(k in loaded for k in ("Q_A", "d_A", "Q_G", "d_G", "pi")):
                layer.eig = tuple(loaded[k] for k in ("Q_A", "d_A", "Q_G", "d_G", "pi"))
                layer.eig_ok = True
                layer.eig_summary = tuple(float(v) for v in torch.stack(
                    [layer.eig[1].min(), layer.eig[1].max(), layer.eig[3].min(), layer.eig[3].max()]).tolist())
            else:
                layer.eig, layer.eig_ok = None, True
            layer.reset_accumulator()
        self._statistics_calls = int(meta["statistics_calls"])
        self._statistics_updates = int(meta["statistics_updates"])
        self._steps = int(meta["steps"])
        self._inverse_updates = int(meta["inverse_updates"])
        self._rejected = []

    def remove_hooks(self) -> None:
        """Detach the forward hooks from the model (the preconditioner stops seeing new forwards)."""
        for handle in self._handles:
            handle.remove()
        self._handles = []


def _synchronize(layers: list[_Layer]) -> None:
    if layers and layers[0].A.is_cuda:
        torch.cuda.synchronize(layers[0].A.device)
