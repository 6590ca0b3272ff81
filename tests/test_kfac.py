"""K-FAC against independent, explicit computations (float64).

Vec convention used throughout: vec(M) stacks the *columns* of M, vec(M) = M.t().reshape(-1). For a
layer with augmented weight W̄ = [W | b] of shape [out, in+1] the K-FAC Fisher block for this vec is
A ⊗ G (torch.kron(A, G)), and vec(G⁻¹ ∇W̄ A⁻¹) = (A ⊗ G)⁻¹ vec(∇W̄).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn
from torch.distributions import Categorical

from rlgeom.geometry.kfac import KFACPreconditioner, KFACStats

DT = torch.float64


def vec(m: torch.Tensor) -> torch.Tensor:
    """Column-stacking vec."""
    return m.t().reshape(-1)


def unvec(v: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    return v.reshape(cols, rows).t()


def augmented(layer: nn.Module, weight_part: torch.Tensor, bias_part: torch.Tensor | None) -> torch.Tensor:
    cols = [weight_part.reshape(weight_part.shape[0], -1)]
    if bias_part is not None:
        cols.append(bias_part.reshape(-1, 1))
    return torch.cat(cols, dim=1)


def grad_of(layer: nn.Module) -> torch.Tensor:
    return augmented(layer, layer.weight.grad, None if layer.bias is None else layer.bias.grad)


def with_one(x: torch.Tensor) -> torch.Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype)], dim=1)


def mlp(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 4)).to(DT)


def nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return -torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def sampled_nll(logits: torch.Tensor) -> torch.Tensor:
    """Mean over samples of -log p(ỹ|x), ỹ sampled from the model (the model Fisher's loss)."""
    probs = torch.softmax(logits.detach(), -1).nan_to_num(1.0)  # NaN rows (NaN test) sample anything
    return nll(logits, torch.multinomial(probs, 1).squeeze(-1)).mean()


def collect(pre: KFACPreconditioner, model: nn.Module, x: torch.Tensor) -> bool:
    model.zero_grad()
    with pre.track_statistics() as collecting:
        sampled_nll(model(x)).backward()
    model.zero_grad()
    return collecting


def update_grads(model: nn.Module, x: torch.Tensor) -> None:
    """Some other loss for the update direction (a weighted log-likelihood, like a policy gradient)."""
    model.zero_grad()
    logits = model(x)
    weights = torch.linspace(-1.0, 2.0, x.shape[0], dtype=DT)
    (weights * nll(logits, torch.arange(x.shape[0]) % logits.shape[-1])).mean().backward()


# --------------------------------------------------------------------------------------- Linear
def test_single_sample_kfac_block_is_the_exact_per_sample_fisher():
    torch.manual_seed(1)
    layer = nn.Linear(3, 4).to(DT)
    pre = KFACPreconditioner(layer)
    x = torch.randn(1, 3, dtype=DT)
    with pre.track_statistics():
        logits = layer(x)
        y = Categorical(logits=logits).sample()
        (-Categorical(logits=logits).log_prob(y).sum()).backward()
    A, G = pre.factors()["model"]
    g_full = grad_of(layer)                                   # [out, in+1] = g āᵀ
    exact = torch.outer(vec(g_full), vec(g_full))             # per-sample Fisher of one sampled target
    torch.testing.assert_close(torch.kron(A, G), exact, rtol=1e-12, atol=1e-14)
    # the same block for torch's row-major flatten is G ⊗ A
    flat = g_full.reshape(-1)
    torch.testing.assert_close(torch.kron(G, A), torch.outer(flat, flat), rtol=1e-12, atol=1e-14)
    # and the factors themselves: ā = [x, 1], g = softmax − onehot(ỹ)
    a_bar = with_one(x)[0]
    g = torch.softmax(logits.detach(), -1)[0] - nn.functional.one_hot(y, 4)[0].to(DT)
    torch.testing.assert_close(A, torch.outer(a_bar, a_bar))
    torch.testing.assert_close(G, torch.outer(g, g))


def explicit_mlp_factors(model: nn.Sequential, x: torch.Tensor):
    """A, G per layer by hand: pre-activations with retain_grad, per-sample grads = N · dL/ds."""
    torch.manual_seed(123)
    l1, l2 = model[0], model[2]
    s1 = l1(x)
    s1.retain_grad()
    h = torch.tanh(s1)
    s2 = l2(h)
    s2.retain_grad()
    sampled_nll(s2).backward()
    n = x.shape[0]
    out = []
    for a, s in ((x, s1), (h.detach(), s2)):
        a_bar = with_one(a.detach())
        g = s.grad * n
        A = sum(torch.outer(a_bar[i], a_bar[i]) for i in range(n)) / n
        G = sum(torch.outer(g[i], g[i]) for i in range(n)) / n
        out.append((A, G))
    model.zero_grad()
    return out


@pytest.mark.parametrize("form", ["eigen", "tikhonov"])
def test_linear_preconditioned_gradient_matches_explicit_solve(form):
    model = mlp(2)
    lam = 0.05
    pre = KFACPreconditioner(model, damping=lam, damping_form=form)
    x = torch.randn(8, 3, dtype=DT)
    expected = explicit_mlp_factors(model, x)
    torch.manual_seed(123)                                    # same sampled targets inside the context
    with pre.track_statistics():
        sampled_nll(model(x)).backward()
    factors = pre.factors()
    for name, (A_ref, G_ref) in zip(("0", "2"), expected):
        torch.testing.assert_close(factors[name][0], A_ref)
        torch.testing.assert_close(factors[name][1], G_ref)

    update_grads(model, x)
    raw = {name: grad_of(model[int(name)]).clone() for name in ("0", "2")}
    stats = pre.step()
    assert isinstance(stats, KFACStats) and stats.finite and stats.inverses_updated
    for name in ("0", "2"):
        A, G = factors[name]
        if form == "eigen":
            M = torch.kron(A, G) + lam * torch.eye(A.shape[0] * G.shape[0], dtype=DT)
        else:
            pi = math.sqrt((torch.trace(A) / A.shape[0]) / (torch.trace(G) / G.shape[0]))
            M = torch.kron(A + pi * math.sqrt(lam) * torch.eye(A.shape[0], dtype=DT),
                           G + math.sqrt(lam) / pi * torch.eye(G.shape[0], dtype=DT))
        want = unvec(torch.linalg.solve(M, vec(raw[name])), G.shape[0], A.shape[0])
        torch.testing.assert_close(grad_of(model[int(name)]), want, rtol=1e-9, atol=1e-11)


def test_untracked_parameters_are_left_alone_and_stats_record():
    model = mlp(3)
    model.log_std = nn.Parameter(torch.zeros(4, dtype=DT))
    pre = KFACPreconditioner(model)
    x = torch.randn(6, 3, dtype=DT)
    collect(pre, model, x)
    update_grads(model, x)
    model.log_std.grad = torch.full((4,), 0.5, dtype=DT)
    stats = pre.step()
    assert torch.equal(model.log_std.grad, torch.full((4,), 0.5, dtype=DT))
    assert pre.layer_names == ("0", "2") and stats.n_layers == 2
    assert stats.eig_min_A >= 0 and stats.eig_max_A >= stats.eig_min_A and stats.eig_max_G > 0
    assert stats.max_condition >= 1 and stats.inverse_seconds >= 0 and stats.damping == 1e-2
    assert set(stats.scalars()) >= {"damping", "max_condition", "finite"}


# ------------------------------------------------------------------------------------------ Conv2d
def per_location_nll(out: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Conv output [B, K, H, W] as K-way categoricals per location; per-sample loss sums locations."""
    logp = torch.log_softmax(out, dim=1).gather(1, targets.unsqueeze(1)).squeeze(1)
    return -logp.sum(dim=(1, 2)).mean()


def test_1x1_conv_equals_linear_per_location():
    torch.manual_seed(4)
    B, C, H, W, K = 3, 3, 2, 4, 4
    conv = nn.Conv2d(C, K, 1).to(DT)
    lin = nn.Linear(C, K).to(DT)
    with torch.no_grad():
        lin.weight.copy_(conv.weight.reshape(K, C))
        lin.bias.copy_(conv.bias)
    lam = 1e-2
    pre_c = KFACPreconditioner(conv, damping=H * W * lam)
    pre_l = KFACPreconditioner(lin, damping=lam)
    x = torch.randn(B, C, H, W, dtype=DT)
    targets = torch.randint(0, K, (B, H, W))
    rows = x.permute(0, 2, 3, 1).reshape(-1, C)

    with pre_c.track_statistics():
        per_location_nll(conv(x), targets).backward()       # B samples, each the sum over H·W locations
    with pre_l.track_statistics():                          # B·H·W samples, one location each
        lin_loss = -torch.log_softmax(lin(rows), -1).gather(1, targets.reshape(-1, 1)).mean()
        lin_loss.backward()
    A_c, G_c = pre_c.factors()["model"]
    A_l, G_l = pre_l.factors()["model"]
    torch.testing.assert_close(A_c, A_l)                    # A: mean over samples and locations
    torch.testing.assert_close(G_c, H * W * G_l)            # G: summed over the H·W locations
    # a conv sample's Fisher is H·W times a row's, and so is its gradient: with λ scaled alike the
    # natural gradients coincide
    torch.testing.assert_close(conv.weight.grad.reshape(K, C), H * W * lin.weight.grad)
    pre_c.step()
    pre_l.step()
    torch.testing.assert_close(conv.weight.grad.reshape(K, C), lin.weight.grad)
    torch.testing.assert_close(conv.bias.grad, lin.bias.grad)


CONV_CASES = [
    dict(stride=1, padding=0, dilation=1),
    dict(stride=2, padding=1, dilation=1),
    dict(stride=(1, 2), padding=(2, 1), dilation=(2, 1)),
    dict(stride=1, padding="same", dilation=1),
]


def padded(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Zero padding by slicing into a bigger zero tensor (independent of F.pad / unfold)."""
    if conv.padding == "same":
        (kh, kw), (dh, dw) = conv.kernel_size, conv.dilation
        th, tw = dh * (kh - 1), dw * (kw - 1)
        top, left, bottom, right = th // 2, tw // 2, th - th // 2, tw - tw // 2
    else:
        (top, left), (bottom, right) = conv.padding, conv.padding
    B, C, H, W = x.shape
    out = torch.zeros(B, C, H + top + bottom, W + left + right, dtype=x.dtype)
    out[:, :, top: top + H, left: left + W] = x
    return out


@pytest.mark.parametrize("case", CONV_CASES, ids=[str(c) for c in CONV_CASES])
def test_3x3_conv_factors_match_plain_loop(case):
    torch.manual_seed(5)
    B, C, K = 2, 2, 3
    conv = nn.Conv2d(C, K, 3, **case).to(DT)
    lam = 0.1
    pre = KFACPreconditioner(conv, damping=lam)
    x = torch.randn(B, C, 6, 7, dtype=DT)
    with pre.track_statistics():
        out = conv(x)
        out.retain_grad()
        targets = torch.randint(0, K, (B, out.shape[2], out.shape[3]))
        per_location_nll(out, targets).backward()
    A, G = pre.factors()["model"]

    xp = padded(x, conv)
    (kh, kw), (sh, sw), (dh, dw) = conv.kernel_size, conv.stride, conv.dilation
    Ho, Wo = out.shape[2], out.shape[3]
    A_ref = torch.zeros(C * kh * kw + 1, C * kh * kw + 1, dtype=DT)
    G_ref = torch.zeros(K, K, dtype=DT)
    for b in range(B):
        for i in range(Ho):
            for j in range(Wo):
                patch = xp[b, :, i * sh: i * sh + dh * (kh - 1) + 1: dh, j * sw: j * sw + dw * (kw - 1) + 1: dw]
                a_bar = torch.cat([patch.reshape(-1), torch.ones(1, dtype=DT)])
                A_ref += torch.outer(a_bar, a_bar)
                g = out.grad[b, :, i, j] * B                 # per-sample gradient of a mean-over-B loss
                G_ref += torch.outer(g, g)
    A_ref /= B * Ho * Wo                                     # mean over samples and locations
    G_ref /= B                                               # sum over locations, mean over samples
    torch.testing.assert_close(A, A_ref, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(G, G_ref, rtol=1e-12, atol=1e-13)

    raw = grad_of(conv).clone()
    pre.step()
    M = torch.kron(A_ref, G_ref) + lam * torch.eye(A_ref.shape[0] * K, dtype=DT)
    want = unvec(torch.linalg.solve(M, vec(raw)), K, A_ref.shape[0])
    torch.testing.assert_close(grad_of(conv), want, rtol=1e-9, atol=1e-11)


def test_grouped_conv_is_refused_clearly():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="groups=2"):
        KFACPreconditioner(model)
    with pytest.raises(ValueError, match="nothing to precondition"):
        KFACPreconditioner(model, exclude=[model[0]])


# -------------------------------------------------------------------------------------- schedule
def test_statistics_and_inverse_schedule():
    model = mlp(6)
    decay = 0.9
    pre = KFACPreconditioner(model, stat_decay=decay, update_statistics_every=2, update_inverse_every=3)
    eig_keys = ("0.Q_A", "0.d_A", "2.Q_G", "2.d_G")
    prev_factors, prev_eig = None, None
    for it in range(7):
        x = torch.randn(5, 3, dtype=DT)
        expected_batch = explicit_mlp_factors(model, x)
        torch.manual_seed(123)
        collecting = collect(pre, model, x)
        assert collecting == (it % 2 == 0)
        factors = pre.factors()
        if collecting:
            for name, (A_b, G_b) in zip(("0", "2"), expected_batch):
                if prev_factors is None:             # the first batch initialises the averages
                    torch.testing.assert_close(factors[name][0], A_b)
                    torch.testing.assert_close(factors[name][1], G_b)
                else:
                    torch.testing.assert_close(factors[name][0], decay * prev_factors[name][0] + (1 - decay) * A_b)
                    torch.testing.assert_close(factors[name][1], decay * prev_factors[name][1] + (1 - decay) * G_b)
        else:
            for name in ("0", "2"):
                assert torch.equal(factors[name][0], prev_factors[name][0])
                assert torch.equal(factors[name][1], prev_factors[name][1])
        prev_factors = factors

        update_grads(model, x)
        stats = pre.step()
        assert stats.inverses_updated == (it % 3 == 0)
        tensors = pre.state_dict()["tensors"]
        eig = {k: tensors[k] for k in eig_keys}
        if not stats.inverses_updated:
            assert all(torch.equal(eig[k], prev_eig[k]) for k in eig_keys)
        prev_eig = eig
        assert pre.counters == {
            "statistics_calls": it + 1,
            "statistics_updates": it // 2 + 1,
            "steps": it + 1,
            "inverse_updates": it // 3 + 1,
        }


def test_a_repeat_step_reuses_the_decompositions_and_keeps_the_cadence():
    """step(repeat=True), a further pass on the same statistics: no refresh and no T_inv count, even where
    a counted step would refresh (T_inv = 1); the next counted step refreshes as it would have."""
    model = mlp(5)
    pre = KFACPreconditioner(model, update_inverse_every=1)
    x = torch.randn(6, 3, dtype=DT)
    collect(pre, model, x)
    update_grads(model, x)
    assert pre.step().inverses_updated
    eig = {k: v.clone() for k, v in pre.state_dict()["tensors"].items() if ".Q_" in k or ".d_" in k}
    assert len(eig) == 8  # Q_A, d_A, Q_G, d_G of both layers
    collect(pre, model, torch.randn(6, 3, dtype=DT))  # new factors: a counted step would decompose them
    update_grads(model, x)
    stats = pre.step(repeat=True)
    assert not stats.inverses_updated and stats.finite
    assert all(torch.equal(pre.state_dict()["tensors"][k], v) for k, v in eig.items())
    assert pre.counters["steps"] == 1 and pre.counters["inverse_updates"] == 1
    update_grads(model, x)
    assert pre.step().inverses_updated
    assert pre.counters["steps"] == 2 and pre.counters["inverse_updates"] == 2


def test_backward_outside_the_context_collects_nothing():
    model = mlp(7)
    pre = KFACPreconditioner(model)
    x = torch.randn(4, 3, dtype=DT)
    with pytest.raises(RuntimeError, match="no statistics"):
        update_grads(model, x)
        pre.step()
    collect(pre, model, x)
    before = pre.factors()
    sampled_nll(model(torch.randn(4, 3, dtype=DT))).backward()
    after = pre.factors()
    assert all(torch.equal(before[k][i], after[k][i]) for k in before for i in range(2))
    with pytest.raises(RuntimeError, match="nested"):
        with pre.track_statistics():
            with pre.track_statistics():
                pass


def test_invalid_configuration_names_the_problem():
    with pytest.raises(ValueError, match="damping must be"):
        KFACPreconditioner(mlp(), damping=0.0)
    with pytest.raises(ValueError, match="damping_form"):
        KFACPreconditioner(mlp(), damping_form="diag")
    with pytest.raises(ValueError, match="update_inverse_every"):
        KFACPreconditioner(mlp(), update_inverse_every=0)
    with pytest.raises(ValueError, match="stat_decay"):
        KFACPreconditioner(mlp(), stat_decay=1.0)


# ------------------------------------------------------------------------------ quadratic form
def test_fisher_quadratic_form_is_the_explicit_kronecker_form():
    model = mlp(8)
    pre = KFACPreconditioner(model)
    collect(pre, model, torch.randn(7, 3, dtype=DT))
    factors = pre.factors()
    params = list(model.parameters())
    torch.manual_seed(9)
    deltas = [torch.randn_like(p) for p in params]
    expected = 0.0
    for name, layer_idx in (("0", 0), ("2", 2)):
        A, G = factors[name]
        d = vec(augmented(model[layer_idx], deltas[layer_idx], deltas[layer_idx + 1]))
        expected = expected + d @ torch.kron(A, G) @ d
    torch.testing.assert_close(pre.fisher_quadratic_form(deltas), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(pre.fisher_quadratic_form(dict(zip(params, deltas))), expected, rtol=1e-12, atol=0)
    # a weight-only delta: the bias column is zero
    A, G = factors["0"]
    d = vec(augmented(model[0], deltas[0], torch.zeros(5, dtype=DT)))
    torch.testing.assert_close(pre.fisher_quadratic_form({params[0]: deltas[0]}), d @ torch.kron(A, G) @ d)
    with pytest.raises(ValueError, match="match model.parameters"):
        pre.fisher_quadratic_form(deltas[:2])


# -------------------------------------------------------------------------------------- non-finite
class InjectNaN(nn.Module):
    """Puts a NaN into one hidden activation when armed."""

    def __init__(self):
        super().__init__()
        self.armed = False

    def forward(self, h):
        if self.armed:
            h = h.clone()
            h[0, 1] = float("nan")
        return h


def test_nan_activation_gives_finite_grads_and_is_reported():
    torch.manual_seed(10)
    inject = InjectNaN()
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), inject, nn.Linear(5, 4)).to(DT)
    pre = KFACPreconditioner(model)
    x = torch.randn(6, 3, dtype=DT)
    collect(pre, model, x)
    update_grads(model, x)
    assert pre.step().finite
    good = pre.factors()

    inject.armed = True
    collect(pre, model, x)
    update_grads(model, x)
    assert not all(torch.isfinite(p.grad).all() for p in model.parameters())
    stats = pre.step()
    assert not stats.finite and stats.nonfinite_layers
    assert "3" in stats.rejected_statistics
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())
    after = pre.factors()                                    # the bad batch was not folded in
    assert all(torch.equal(good[k][i], after[k][i]) for k in good for i in range(2))

    inject.armed = False                                     # and the next clean update works
    collect(pre, model, x)
    update_grads(model, x)
    stats = pre.step()
    assert stats.finite and not stats.rejected_statistics


# ---------------------------------------------------------------------------------- checkpoints
def test_state_dict_round_trip_restores_identical_preconditioning(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    def make():
        torch.manual_seed(11)
        return nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).to(DT)

    model = make()
    pre = KFACPreconditioner(model, update_inverse_every=3, damping_form="tikhonov")
    x = torch.randn(5, 2, 4, 4, dtype=DT)
    for _ in range(2):                                       # mid-period: factors newer than the inverses
        collect(pre, model, x)
        update_grads(model, x)
        pre.step()
    collect(pre, model, x)

    state = pre.state_dict()
    safetensors_torch.save_file(state["tensors"], str(tmp_path / "kfac.safetensors"))
    (tmp_path / "kfac.json").write_text(json.dumps(state["meta"]))

    model2 = make()                                          # a fresh model (deepcopy would copy the hooks)
    model2.load_state_dict(model.state_dict())
    pre2 = KFACPreconditioner(model2, update_inverse_every=3, damping_form="tikhonov")
    pre2.load_state_dict({"tensors": safetensors_torch.load_file(str(tmp_path / "kfac.safetensors")),
                          "meta": json.loads((tmp_path / "kfac.json").read_text())})
    assert pre2.counters == pre.counters
    for _ in range(2):                                       # no refresh, then a refresh: both identical
        update_grads(model, x)
        update_grads(model2, x)
        s1, s2 = pre.step(), pre2.step()
        assert s1.inverses_updated == s2.inverses_updated
        for p1, p2 in zip(model.parameters(), model2.parameters()):
            assert torch.equal(p1.grad, p2.grad)
    with pytest.raises(ValueError, match="do not match"):
        KFACPreconditioner(nn.Sequential(nn.Linear(3, 4))).load_state_dict(state)
    with pytest.raises(ValueError, match="has shape"):
        KFACPreconditioner(mlp()).load_state_dict(state)


# ------------------------------------------------------------------- against the exact block Fisher
def test_preconditioner_is_the_exact_block_fisher_solve_where_kfac_is_exact():
    """Every layer type K-FAC takes (Conv2d, Linear), against the exact block Fisher from per-sample
    Jacobians: F_l = mean_i vec(∇_l ℓ_i) vec(∇_l ℓ_i)ᵀ, the per-sample gradients by torch.func (autograd per
    sample, not K-FAC's hooks), ℓ_i = −log p(ỹ_i|x) with ỹ_i sampled from the model. With the same input in
    every sample and one output location per conv, K-FAC's two assumptions (activations independent of
    output gradients; no cross-location terms) hold exactly, so A ⊗ G must be F_l to rounding and the
    preconditioned gradient must be (F_l + λI)⁻¹ vec(∇_l L) of another loss, at both layers."""
    torch.manual_seed(8)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Tanh(), nn.Linear(3, 4)).to(DT)
    lam, n = 0.03, 16
    pre = KFACPreconditioner(model, damping=lam)
    x = torch.randn(1, 2, 3, 3, dtype=DT).expand(n, 2, 3, 3)   # one output location for the 3×3 conv
    targets = torch.multinomial(torch.softmax(model(x[:1]).detach(), -1).expand(n, 4), 1).squeeze(-1)
    with pre.track_statistics():
        nll(model(x), targets).mean().backward()
    factors = pre.factors()

    params = dict(model.named_parameters())

    def sample_loss(p, xi, yi):
        return nll(torch.func.functional_call(model, p, (xi[None],)), yi[None]).sum()

    per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))(params, x, targets)
    exact = {}
    for name in ("0", "3"):
        w, b = per_sample[f"{name}.weight"], per_sample[f"{name}.bias"]
        v = torch.stack([vec(augmented(model[int(name)], w[i], b[i])) for i in range(n)])
        exact[name] = v.t() @ v / n
        A, G = factors[name]
        torch.testing.assert_close(torch.kron(A, G), exact[name], rtol=1e-10, atol=1e-12)

    update_grads(model, x)
    raw = {name: grad_of(model[int(name)]).clone() for name in ("0", "3")}
    assert pre.step().finite
    for name in ("0", "3"):
        M = exact[name] + lam * torch.eye(exact[name].shape[0], dtype=DT)
        out = model[int(name)].out_channels if name == "0" else model[3].out_features
        want = unvec(torch.linalg.solve(M, vec(raw[name])), out, raw[name].shape[1])
        torch.testing.assert_close(grad_of(model[int(name)]), want, rtol=1e-8, atol=1e-10)
