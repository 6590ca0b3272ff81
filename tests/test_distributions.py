"""Action distributions against torch.distributions and the explicit Fisher of their parameters."""

import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import distributions as D

from rlgeom.models.distributions import (
    BernoulliFamily,
    CategoricalFamily, DiagGaussianFamily, MultiCategoricalFamily, family_for_space,
)



@pytest.fixture(autouse=True)
def float64():
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(previous)


def explicit_fisher(family, params):
    """Hessian of KL(p_old ‖ p) in the parameters at p = p_old, one sample at a time."""
    out = []
    for row in params:
        old = row.detach()

        def kl(x):
            return D.kl_divergence(family.distribution(old[None]), family.distribution(x[None])).sum()

        out.append(torch.autograd.functional.hessian(kl, old.clone()))
    return torch.stack(out)


@pytest.mark.parametrize("family", [CategoricalFamily(4), MultiCategoricalFamily([2, 3]), DiagGaussianFamily(3)])
def test_fisher_product_equals_explicit_fisher(family):
    params = torch.randn(5, family.param_dim)
    v = torch.randn_like(params)
    F = explicit_fisher(family, params)
    expected = torch.einsum("bij,bj->bi", F, v)
    torch.testing.assert_close(family.fisher_product(params, v), expected, rtol=1e-7, atol=1e-9)


def test_gaussian_fisher_is_diag_inverse_variance_and_two():
    fam = DiagGaussianFamily(2)
    params = torch.tensor([[0.3, -1.0, 0.5, -0.2]])
    F = fam.fisher_matrix(params)[0]
    sigma = params[0, 2:].exp()
    torch.testing.assert_close(torch.diag(F), torch.cat([1 / sigma**2, torch.tensor([2.0, 2.0])]))


def test_distributions_match_torch():
    logits = torch.randn(6, 4)
    cat = CategoricalFamily(4).distribution(logits)
    ref = D.Categorical(logits=logits)
    a = ref.sample()
    torch.testing.assert_close(cat.log_prob(a), ref.log_prob(a))
    torch.testing.assert_close(cat.entropy(), ref.entropy())

    params = torch.randn(6, 4)
    g = DiagGaussianFamily(2).distribution(params)
    ref = D.Normal(params[:, :2], params[:, 2:].exp())
    x = torch.randn(6, 2)
    torch.testing.assert_close(g.log_prob(x), ref.log_prob(x).sum(-1))
    torch.testing.assert_close(g.entropy(), ref.entropy().sum(-1))

    logits = torch.randn(6, 5)
    mc = MultiCategoricalFamily([2, 3]).distribution(logits)
    parts = [D.Categorical(logits=logits[:, :2]), D.Categorical(logits=logits[:, 2:])]
    act = mc.sample()
    assert act.shape == (6, 2)
    torch.testing.assert_close(mc.log_prob(act), parts[0].log_prob(act[:, 0]) + parts[1].log_prob(act[:, 1]))
    torch.testing.assert_close(mc.entropy(), parts[0].entropy() + parts[1].entropy())
    other = MultiCategoricalFamily([2, 3]).distribution(logits + torch.randn(6, 5))
    kl = D.kl_divergence(mc, other)
    expected = sum(D.kl_divergence(p, q) for p, q in zip(parts, other.parts))
    torch.testing.assert_close(kl, expected)
    assert torch.equal(mc.mode, torch.stack([logits[:, :2].argmax(-1), logits[:, 2:].argmax(-1) + 0], -1))


def test_family_for_space_and_errors():
    assert isinstance(family_for_space(spaces.Discrete(3)), CategoricalFamily)
    assert isinstance(family_for_space(spaces.MultiDiscrete([2, 4])), MultiCategoricalFamily)
    assert isinstance(family_for_space(spaces.Box(-1, 1, (2,))), DiagGaussianFamily)
    assert isinstance(family_for_space(spaces.MultiBinary(3)), BernoulliFamily)
    shaped = family_for_space(spaces.Box(-1, 1, (2, 2)))  # any shape: one flat vector of 4 dimensions
    assert shaped.action_dim == 4 and shaped.action_shape == (2, 2)
    with pytest.raises(ValueError, match="accepted: Discrete, MultiDiscrete, MultiBinary, float Box"):
        family_for_space(spaces.Text(5))
    with pytest.raises(ValueError, match="float dtype"):
        family_for_space(spaces.Box(0, 3, (2,), dtype=np.int64))


def test_closed_form_log_prob_and_entropy_match_torch_and_their_gradients():
    """The families' closed forms (family.log_prob, family.entropy) against torch.distributions built here."""
    logits = torch.randn(6, 4, requires_grad=True)
    actions = torch.randint(0, 4, (6,))
    ref = D.Categorical(logits=logits)
    cases = [(CategoricalFamily(4), logits, actions, ref.log_prob(actions), ref.entropy())]
    params = torch.randn(6, 6, requires_grad=True)
    x = torch.randn(6, 3)
    ref = D.Normal(params[:, :3], params[:, 3:].exp())
    cases.append((DiagGaussianFamily(3), params, x, ref.log_prob(x).sum(-1), ref.entropy().sum(-1)))
    logits_mc = torch.randn(6, 5, requires_grad=True)
    a_mc = torch.stack([torch.randint(0, 2, (6,)), torch.randint(0, 3, (6,))], -1)
    parts = [D.Categorical(logits=logits_mc[:, :2]), D.Categorical(logits=logits_mc[:, 2:])]
    cases.append((MultiCategoricalFamily([2, 3]), logits_mc, a_mc,
                  parts[0].log_prob(a_mc[:, 0]) + parts[1].log_prob(a_mc[:, 1]), parts[0].entropy() + parts[1].entropy()))
    logits_b = torch.randn(6, 3, requires_grad=True)
    a_b = torch.randint(0, 2, (6, 3)).to(logits_b.dtype)
    ref_b = D.Bernoulli(logits=logits_b)
    cases.append((BernoulliFamily(3), logits_b, a_b, ref_b.log_prob(a_b).sum(-1), ref_b.entropy().sum(-1)))
    for family, p, a, ref_lp, ref_ent in cases:
        lp, ent = family.log_prob(p, a), family.entropy(p)
        torch.testing.assert_close(lp, ref_lp)
        torch.testing.assert_close(ent, ref_ent)
        w = torch.randn(6)
        ours = torch.autograd.grad((lp * w).sum() + (ent * w).sum(), p)[0]
        theirs = torch.autograd.grad((ref_lp * w).sum() + (ref_ent * w).sum(), p)[0]
        torch.testing.assert_close(ours, theirs)
